"""rsna.data.synthetic: layout, determinism, planted quirks, and bleeds a model can see."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from harness import TINY
from rsna.data.dicom import check_file, read_header, read_hu
from rsna.data.labels import LABELS, SUBTYPES, read_labels
from rsna.data.synthetic import (
    GROUPS,
    PADDING_HU,
    TRAIN_DIR,
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


def _quiet(series):
    """`series` without its bleeds and motion: the anatomy alone."""
    return replace(series, bleeds=(), motion=())


def test_a_bleed_tip_is_fainter_than_its_middle():
    """The scanner's blur spreads a bleed but keeps its mass: the HU gained over the whole
    slice, per bleed pixel, falls at the tip by exactly the partial-volume share."""
    series = _quiet(plan(SynthConfig(patients=2, slices=9, size=128, seed=5))[0])
    k = len(series.image_ids) // 2
    bleed = Bleed("intraparenchymal", float(k), 2.2, 0.0, 0.1, 0.0, 0.25, 80.0)
    gained = {}
    for j in (k, k - 2):
        hu, counts = render_slice(replace(series, bleeds=(bleed,)), j)
        base, none = render_slice(series, j)
        assert sum(none.values()) == 0 and counts["intraparenchymal"] >= 30
        gained[j] = float((hu - base).sum()) / counts["intraparenchymal"]
    assert 40 <= gained[k] <= 65  # 80 HU blood over 20-40 HU brain
    assert gained[k - 2] / gained[k] == pytest.approx(partial_volume(bleed, k - 2), rel=0.05)


def test_calcifications_are_dense_and_unlabelled():
    series = _quiet(plan(SynthConfig(patients=2, slices=9, size=128, seed=5))[0])
    k = len(series.image_ids) // 2 + 1  # the atria of the lateral ventricles
    calcified = replace(series.head, choroid_hu=250.0, pineal_hu=200.0, plaque_hu=0.0)
    plain = replace(series.head, choroid_hu=0.0, pineal_hu=0.0, plaque_hu=0.0)
    hu, counts = render_slice(replace(series, head=calcified), k)
    base, _ = render_slice(replace(series, head=plain), k)
    dense = (hu - base) > 50
    assert dense.sum() >= 6 and sum(counts.values()) == 0  # seen, and no label
    assert np.percentile(hu[dense], 90) > 100  # calcium, above blood's 40-90 HU


def test_negatives_show_dense_structures_a_threshold_mistakes_for_blood(tiny_competition):
    """Blood-range pixels (50-100 HU) inside the skull on negative slices: vessels, the
    dense falx, the bone rim and skull-base streaks. A threshold cannot separate them."""
    root = tiny_competition.root / TRAIN_DIR
    labels = tiny_competition.train_labels
    corrupt = set(tiny_competition.manifest["corrupt"]["train"])
    counts = {}
    for image_id in labels.index.difference(sorted(corrupt)):
        hu = read_hu(root / f"{image_id}.dcm")
        counts[image_id] = int(((hu >= 50) & (hu <= 100) & _brain(hu)).sum())
    counts = pd.Series(counts)
    positive = labels.loc[counts.index, "any"] == 1
    assert positive.sum() >= 3 and (~positive).sum() >= 10
    assert counts[~positive].max() > counts[positive].quantile(0.25)
    assert roc_auc_score(positive, counts) < 0.9  # about 0.78 here


def test_prevalence_and_subtype_order_follow_the_real_data(tmp_path):
    """About 14% of real slices are `any`-positive; epidural is the rarest subtype."""
    result = make_competition(tmp_path, SynthConfig(patients=64, size=64, seed=0), workers=2)
    labels = pd.concat([result.train_labels, result.test_labels])
    rates = labels.mean()
    assert 0.10 <= rates["any"] <= 0.18
    assert rates["epidural"] == rates[list(SUBTYPES)].min() > 0


def test_label_noise_flips_its_rate_of_the_borderline_labels(tmp_path):
    noisy = make_competition(tmp_path / "n", replace(TINY, label_noise=0.5), workers=1)
    m = noisy.manifest
    noise = m["label_noise"]["train"]
    assert noise["rate"] == 0.5
    assert len(noise["flipped"]) == round(0.5 * noise["borderline"]) > 0
    # The labels are the planted pixels at the positive floor (4 pixels at this size),
    # except exactly the flipped ones.
    labels = noisy.train_labels
    clean = {
        f"{image_id}_{subtype}"
        for image_id, pixels in m["bleed_pixels"].items()
        for subtype, count in pixels.items()
        if count >= 4 and image_id in labels.index
    }
    stacked = labels[list(SUBTYPES)].stack()
    given = {f"{i}_{s}" for (i, s), v in stacked.items() if v}
    assert given ^ clean == set(noise["flipped"])
    quiet = make_competition(tmp_path / "q", replace(TINY, label_noise=0.0), workers=1)
    assert quiet.manifest["label_noise"]["train"]["flipped"] == []
    assert {f"{i}_{s}" for (i, s), v in quiet.train_labels[list(SUBTYPES)].stack().items() if v} == clean


def test_bleeds_span_adjacent_slices():
    plans = plan(SynthConfig(patients=12, slices=12, size=64, seed=3))
    series = next(s for s in plans if s.bleeds and len(s.bleeds) == 1)
    n = len(series.image_ids)
    any_per_slice = [sum(render_slice(series, k)[1].values()) > 0 for k in range(n)]
    positive = np.flatnonzero(any_per_slice)
    assert len(positive) >= 2
    assert np.all(np.diff(positive) == 1)  # one blob: a contiguous run of slices


def test_series_vary_in_length_thickness_and_field_of_view():
    plans = plan(SynthConfig(patients=40, size=64, seed=0))
    lengths = [len(s.image_ids) for s in plans]
    assert min(lengths) >= 28 and max(lengths) <= 40 and len(set(lengths)) > 5
    assert len({s.dz for s in plans}) >= 3 and len({round(s.fov, 3) for s in plans}) > 10
    assert 0 < sum(bool(s.motion) for s in plans) < len(plans) / 3


def test_phantom_tissue_values():
    series = _quiet(plan(SynthConfig(patients=2, slices=9, size=128, seed=5))[0])
    head = series.head
    hu, _ = render_slice(series, len(series.image_ids) // 2)
    air = hu[(hu > -1100) & (hu < -900)]
    assert air.size > 500 and -1005 < np.median(air) < -995  # inside the field of view
    assert (hu == PADDING_HU).sum() > 500  # outside it
    assert 1000 <= np.percentile(hu, 99.5) <= 1900  # skull
    brain = hu[_brain(hu) & (hu > 15) & (hu < 50)]
    low, high = np.percentile(brain, [10, 90])  # white matter and the cortex
    assert head.white_hu - 8 <= low and high <= head.grey_hu + series.hu_offset + 8
    assert high - low >= 10  # grey-white contrast
    csf = hu[_brain(hu) & (hu > -10) & (hu < 17)]
    assert csf.size > 50 and 4 <= np.median(csf) <= 14


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
