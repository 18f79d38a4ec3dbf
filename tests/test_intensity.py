"""rsna.intensity: the features in closed form, the window choice, the neighbours, and the
per-label logistic regression against a fit by hand on the same folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harness import TINY_CODEC, TINY_SPEC
from rsna.data.cache import cache_dir
from rsna.data.labels import LABELS
from rsna.data.windowing import BRAIN, SOFT_TISSUE, SUBDURAL, apply_window
from rsna.evaluate import evaluate, format_scores
from rsna.intensity import (
    FEATURES,
    FEATURES_DIR,
    IntensityError,
    baseline_oof,
    choose_window,
    intensity_baseline,
    neighbour_features,
    slice_features,
    to_hu,
)


def phantom() -> tuple[np.ndarray, dict[str, int]]:
    """A 64x64 head: air, a bone ring, brain at 30 HU, an 8x8 bleed in the middle, a
    one-pixel bleed strip against the skull's inner edge, and a CSF pool beside the
    bleed; with each feature counted by hand."""
    y, x = np.mgrid[:64, :64]
    r = np.hypot(y - 31.5, x - 31.5)
    hu = np.full((64, 64), -1000.0, np.float32)
    hu[r < 29] = 1000.0
    inside = r < 26
    hu[inside] = 30.0
    hu[28:36, 28:36] = 60.0  # 64 pixels, far from bone: not thin, not near bone
    strip = inside & (r >= 25) & (y < 20) & (np.abs(x - 31.5) < 6)  # against the skull
    hu[strip] = 70.0
    hu[28:36, 37:40] = 8.0  # CSF two pixels from the square
    # the strip is thin (a 3x3 opening removes it) and near bone
    return hu, {
        "blood": 64 + int(strip.sum()),
        "near_bone": int(strip.sum()),
        "near_csf": 8,  # the square's column 35, within round(NEAR * 64) = 2 px of column 37
        "thin": int(strip.sum()),
        "intracranial": int(inside.sum()),
    }


def test_slice_features_count_what_was_drawn():
    hu, counts = phantom()
    assert 5 < counts["near_bone"] < 40
    got = dict(zip(FEATURES, slice_features(hu), strict=True))
    scale = (256 / 64) ** 2
    assert got == {k: pytest.approx(v * scale) for k, v in counts.items()}


def test_bleeds_outside_the_skull_and_calcium_do_not_count():
    hu, counts = phantom()
    hu[2:6, 2:6] = 60.0  # scalp-like blood-range pixels outside the skull
    hu[40:44, 30:34] = 120.0  # calcification inside: above blood's range
    got = dict(zip(FEATURES, slice_features(hu), strict=True))
    assert got["blood"] == pytest.approx(counts["blood"] * 16)


def test_the_window_that_shows_csf_blood_and_bone_apart_is_chosen():
    assert choose_window((BRAIN, SUBDURAL, SOFT_TISSUE)) == 1  # the narrower of the two
    assert choose_window((SOFT_TISSUE, BRAIN)) == 0
    with pytest.raises(IntensityError, match="Received: windows=40/80"):
        choose_window((BRAIN,))


def test_levels_go_back_to_hu_within_a_level():
    hu = np.linspace(-20, 180, 1001, dtype=np.float32)
    back = to_hu(apply_window(hu, SUBDURAL), SUBDURAL)
    assert np.abs(back - hu).max() <= SUBDURAL.width / 255 / 2 + 1e-4


def test_neighbours_come_from_the_same_series_and_repeat_at_its_ends():
    ids = ["a0", "a1", "a2", "b0"]
    slices = pd.DataFrame({"series_uid": ["A", "A", "A", "B"], "slice_index": [0, 1, 2, 0]}, index=ids)  # fmt: skip
    features = pd.DataFrame({"blood": [1.0, 2.0, 3.0, 9.0]}, index=ids)
    got = neighbour_features(features.iloc[[2, 0, 3, 1]], slices)
    assert got.loc["a1"].tolist() == [2.0, 1.0, 3.0]
    assert got.loc["a0"].tolist() == [1.0, 1.0, 2.0]
    assert got.loc["b0"].tolist() == [9.0, 9.0, 9.0]


def test_the_baseline_is_a_logistic_regression_per_label_on_the_other_folds():
    rng = np.random.default_rng(0)
    ids = pd.Index([f"ID_{i:04x}" for i in range(90)], name="image_id")
    blood = rng.gamma(1.0, 50.0, size=90)
    features = pd.DataFrame({"blood": blood, "thin": rng.gamma(1.0, 5.0, size=90)}, index=ids)
    labels = pd.DataFrame(0, index=ids, columns=list(LABELS))
    labels["subdural"] = (blood + rng.normal(0, 20, 90) > 60).astype(int)
    labels["any"] = labels["subdural"]
    folds = pd.Series(np.arange(90) % 3, index=ids)
    features.iloc[5] = np.nan  # an unreadable slice: the training mean
    oof = baseline_oof(features, labels, folds)
    # by hand for fold 1 and `subdural`
    train = (folds != 1).to_numpy() & ~features.isna().any(axis=1).to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(np.log1p(features[train]), labels["subdural"][train])
    held = (folds == 1).to_numpy()
    np.testing.assert_allclose(oof["subdural"][held], model.predict_proba(np.log1p(features[held]))[:, 1], rtol=1e-9)  # fmt: skip
    # no positives in the training folds: the mean, 0
    assert (oof["epidural"] == 0).all()
    assert oof.loc[ids[5], "subdural"] == pytest.approx(labels["subdural"][(folds != 2).to_numpy()].mean())
    assert list(oof.columns) == list(LABELS) and oof.index.equals(ids)


def test_the_baseline_on_a_work_folder_keeps_its_features_and_scores_in_evaluate(tiny_work, two_runs):
    store = cache_dir(tiny_work, TINY_SPEC, TINY_CODEC)
    first = intensity_baseline(tiny_work, store)
    kept = tiny_work / FEATURES_DIR / f"{store.name}.parquet"
    stamp = kept.stat().st_mtime_ns
    again = intensity_baseline(tiny_work, store)
    assert kept.stat().st_mtime_ns == stamp  # read back, not recomputed
    pd.testing.assert_frame_equal(first.slice, again.slice)
    assert first.neighbours.index.equals(first.slice.index)
    root, *_ = two_runs
    result = evaluate(root / "a", tiny_work, baseline=first.slice)
    weighted = result.scores.loc["weighted"]
    assert weighted["to_baseline"] == pytest.approx(weighted["model"] / weighted["baseline"])
    assert result.report["ratio_to_baseline"] == pytest.approx(weighted["to_baseline"])
    assert "baseline: blood-range pixel counts" in format_scores(result.scores)
