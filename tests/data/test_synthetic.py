"""rsna.data.synthetic: layout, determinism, planted quirks, and bleeds a model can see."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from harness import TINY
from rsna.data.dicom import check_file, read_header, read_hu
from rsna.data.labels import LABELS, SUBTYPES, read_labels
from rsna.data.synthetic import (
    GROUPS,
    Bleed,
    SynthConfig,
    SynthError,
    encode_hu,
    expected_hu,
    make_competition,
    partial_volume,
    plan,
    render_slice,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, tiny_competition):
    again = make_competition(tmp_path / "again", TINY, workers=2)
    assert _digest(again.root) == _digest(tiny_competition.root)
    other = make_competition(
        tmp_path / "other", SynthConfig(**{**TINY.__dict__, "seed": 1}), workers=1
    )
    assert _digest(other.root) != _digest(tiny_competition.root)


def test_official_layout(tiny_competition):
    root = tiny_competition.root
    train = sorted(p.stem for p in (root / "stage_2_train").glob("*.dcm"))
    test = sorted(p.stem for p in (root / "stage_2_test").glob("*.dcm"))
    assert train and test and not set(train) & set(test)
    long = pd.read_csv(root / "stage_2_train.csv")
    assert list(long.columns) == ["ID", "Label"]
    assert long["ID"].str.fullmatch(r"ID_[0-9a-f]{9}_(" + "|".join(LABELS) + ")").all()
    sample = pd.read_csv(root / "stage_2_sample_submission.csv")
    assert (sample["Label"] == 0.5).all() and len(sample) == 6 * len(test)
    assert sorted(sample["ID"].str[:12].unique()) == test
    first = sample["ID"].str[:12].iloc[0]
    assert sample["ID"][:6].tolist() == [f"{first}_{c}" for c in LABELS]
    assert sorted(tiny_competition.train_labels.index) == train


def test_planted_quirks(tiny_competition):
    root, m = tiny_competition.root, tiny_competition.manifest
    # Repeated label blocks: six extra rows per duplicated image, agreeing with the rest.
    long = pd.read_csv(root / "stage_2_train.csv")
    assert len(long) == 6 * (m["images"]["train"] + len(m["duplicated_label_images"]))
    with pytest.warns(match="dropped 18 duplicated rows of 3 images"):
        assert read_labels(root / "stage_2_train.csv").equals(tiny_competition.train_labels)
    # One truncated file per split, whose labels still exist.
    for split, folder in (("train", "stage_2_train"), ("test", "stage_2_test")):
        (corrupt,) = m["corrupt"][split]
        header, reason = check_file(root / folder / f"{corrupt}.dcm")
        assert header is not None and reason.startswith("truncated pixel data")
    assert m["corrupt"]["train"][0] in tiny_competition.train_labels.index
    # Bad-intercept files in train, and non-square images.
    train_ids = set(tiny_competition.train_labels.index)
    assert train_ids & set(m["bad_intercept"])
    bad = read_header(
        root / "stage_2_train" / f"{sorted(train_ids & set(m['bad_intercept']))[0]}.dcm"
    )
    assert bad.has_bad_intercept and bad.intercept == 1.0
    odd = read_header(root / "stage_2_train" / f"{sorted(train_ids & set(m['odd_size']))[0]}.dcm")
    assert (odd.rows, odd.cols) == (64, 80)
    assert sum(m["header_groups"].values()) == m["images"]["train"] + m["images"]["test"]


def test_header_groups_are_all_planted_at_scale():
    groups = {s.group for s in plan(SynthConfig(patients=30, size=64))}
    assert groups == set(GROUPS)


def test_any_is_the_or_of_subtypes(tiny_competition):
    labels = tiny_competition.train_labels
    np.testing.assert_array_equal(labels["any"], labels[list(SUBTYPES)].max(axis=1))
    assert 0 < labels["any"].mean() < 0.8


def _brain(hu: np.ndarray) -> np.ndarray:
    """The soft-tissue region inside the skull: the component at the centre of the image."""
    tissue = ((hu > -50) & (hu < 200)).astype(np.uint8)
    _, components = cv2.connectedComponents(tissue, connectivity=4)  # the skull may be 1 px thin
    return components == components[hu.shape[0] // 2, hu.shape[1] // 2]


def test_partial_volume_fades_only_the_ends_of_a_bleed():
    bleed = Bleed("intraparenchymal", 7.0, 2.2, 0.0, 0.1, 0.0, 0.25, 80.0)
    contrast = [partial_volume(bleed, k) for k in range(16)]
    assert contrast[7] == 1.0 and contrast[6] == contrast[8] == 1.0  # t = 0.79: sqrt 0.89 > 0.75
    expected_tip = np.sqrt(1 - (2 / 2.2) ** 2) / 0.75  # 0.556
    assert contrast[5] == contrast[9] == pytest.approx(expected_tip)
    assert contrast[4] == contrast[10] == 0.0  # outside the blob
    faint = Bleed("intraparenchymal", 7.0, 3.02, 0.0, 0.1, 0.0, 0.25, 80.0)
    assert partial_volume(faint, 10) == 0.25  # the floor, TIP_CONTRAST


def test_a_bleed_tip_is_fainter_than_its_middle():
    series = plan(SynthConfig(patients=6, slices=16, size=128, seed=0))[0]
    bleed = Bleed("intraparenchymal", 7.0, 2.2, 0.0, 0.1, 0.0, 0.25, 80.0)
    series = replace(series, bleeds=(bleed,))
    without = replace(series, bleeds=())
    for k, share in ((7, 1.0), (5, partial_volume(bleed, 5))):
        hu, counts = render_slice(series, k)
        base, _ = render_slice(without, k)
        mask = hu != base
        assert counts["intraparenchymal"] >= 4 and mask.sum() >= 4
        gained = (hu[mask] - base[mask]).mean()
        assert gained == pytest.approx((80.0 - base[mask].mean()) * share, rel=0.15)


def test_bleeds_are_visible_in_hu(tiny_competition):
    """A positive slice has bleed-like pixels (48-100 HU) in the brain; a negative one almost none."""
    root = tiny_competition.root / "stage_2_train"
    labels = tiny_competition.train_labels
    corrupt = set(tiny_competition.manifest["corrupt"]["train"])
    counts = {}
    for image_id in labels.index:
        if image_id in corrupt:
            continue
        hu = read_hu(root / f"{image_id}.dcm")
        counts[image_id] = int(((hu >= 48) & (hu <= 100) & _brain(hu)).sum())
    counts = pd.Series(counts)
    positive = labels.loc[counts.index, "any"] == 1
    assert positive.sum() >= 3
    assert counts[positive].min() >= 4
    assert counts[~positive].max() <= 2


def test_bleeds_span_adjacent_slices():
    plans = plan(SynthConfig(patients=12, slices=12, size=64, seed=3))
    series = next(s for s in plans if s.bleeds)
    any_per_slice = [sum(render_slice(series, k)[1].values()) > 0 for k in range(12)]
    positive = np.flatnonzero(any_per_slice)
    assert len(positive) >= 2
    assert np.all(np.diff(positive) == 1)  # one blob: a contiguous run of slices


def test_phantom_tissue_values():
    series = plan(SynthConfig(patients=2, slices=9, size=128, seed=5))[0]
    hu, _ = render_slice(series, 4)  # a middle slice: ventricles present
    centre = hu[50:78, 50:78]
    assert -1010 < np.median(hu[104:107, 104:107]) < -990  # air beside the head, inside the field
    assert 1000 <= np.percentile(hu, 99.5) <= 1900  # skull
    brain = hu[(hu > 20) & (hu < 50)]
    assert 30 <= np.median(brain) <= 40
    ventricle = centre[(centre > -10) & (centre < 20)]
    assert ventricle.size > 0 and 5 <= np.median(ventricle) <= 15


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_encode_round_trip_through_the_reader(tmp_path, group):
    from harness import write_slice

    hu = np.linspace(-3100, 3000, 400, dtype=np.float32).reshape(20, 20)
    path = write_slice(tmp_path / "a.dcm", hu, group=group)
    np.testing.assert_array_equal(read_hu(path), expected_hu(hu, group=GROUPS[group]))
    stored, _ = encode_hu(hu, group=GROUPS[group])
    low, high = GROUPS[group].stored_range
    assert stored.min() >= low and stored.max() <= high


def test_config_errors(tmp_path, tiny_competition):
    with pytest.raises(
        SynthError, match="`patients` must be an integer >= 2. Received: patients=1"
    ):
        SynthConfig(patients=1)
    with pytest.raises(SynthError, match="`size` must be an integer >= 32. Received: size=16"):
        SynthConfig(size=16)
    with pytest.raises(SynthError, match="`test_fraction` must be in \\[0, 1\\]"):
        SynthConfig(test_fraction=1.5)
    with pytest.raises(SynthError, match="already holds a competition"):
        make_competition(tiny_competition.root, TINY)
