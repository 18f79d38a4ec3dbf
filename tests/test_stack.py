"""rsna.stack: neighbour features, out-of-fold trees, and the stacked blend's files."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import fuzz_settings
from rsna import predictions
from rsna.blend import blend_runs, read_run, stack_found
from rsna.cli import main
from rsna.data.labels import LABELS
from rsna.data.series import GEOMETRY
from rsna.errors import DataWarning
from rsna.stack import (
    ABOVE_LOGIT,
    StackError,
    StackParams,
    patient_context,
    stack_features,
    stack_runs,
)
from rsna.submission import validate_submission

pytestmark = pytest.mark.filterwarnings("ignore::rsna.errors.DataWarning")  # tiny folds


def _series(lengths: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{uid}_{k}", uid, k, 5.0 * k) for uid, n in lengths.items() for k in range(n)] + [
        ("lonely", "", -1, np.nan)
    ]
    frame = pd.DataFrame(rows, columns=["image_id", "series_uid", "slice_index", "z"])
    return frame.set_index("image_id").sample(frac=1.0, random_state=0)  # any row order


def test_features_hold_each_slices_neighbours_series_summary_and_geometry():
    slices = _series({"a": 4, "b": 2})
    values = pd.DataFrame(
        np.arange(len(slices) * len(LABELS), dtype=float).reshape(len(slices), -1),
        index=slices.index,
        columns=list(LABELS),
    )
    x, names = stack_features({"run": values}, slices, neighbours=1)
    assert x.shape == (len(slices), len(names)) and len(set(names)) == len(names)
    frame = pd.DataFrame(x, index=slices.index, columns=names)
    assert frame.loc["a_1", "r0_any_+1"] == values.loc["a_2", "any"]
    assert frame.loc["a_1", "r0_epidural_-1"] == values.loc["a_0", "epidural"]
    assert frame.loc["a_3", "r0_any_+1"] == values.loc["a_3", "any"]  # the edge repeats
    assert (
        frame.loc["b_0", "r0_subdural_series_max"] == values.loc[["b_0", "b_1"], "subdural"].max()
    )
    assert frame.loc["b_1", "r0_any_series_mean"] == values.loc[["b_0", "b_1"], "any"].mean()
    assert frame.loc["lonely", "r0_any_series_max"] == values.loc["lonely", "any"]  # alone
    assert frame.loc["lonely", "r0_any_-1"] == values.loc["lonely", "any"]
    np.testing.assert_allclose(
        frame.loc[["a_0", "a_1", "a_2", "a_3"], "position"], [0, 1 / 3, 2 / 3, 1]
    )
    np.testing.assert_allclose(frame.loc["a_0", list(GEOMETRY)], [0, 0, 1])
    assert frame.loc["lonely", list(GEOMETRY)].tolist() == [0, 0, 0]


def _context_by_loops(values, study, patient):
    """The patient features one image at a time, the slow obvious way."""
    n, labels = values.shape
    out, studies = np.full((n, 3 * labels), np.nan), np.zeros(n)
    for i in range(n):
        others = (patient == patient[i]) & (study != study[i])
        studies[i] = len(set(study[others]))
        if others.any():
            v = values[others]
            out[i] = np.r_[v.max(axis=0), v.mean(axis=0), (v > ABOVE_LOGIT).sum(axis=0)]
    return out, studies


@fuzz_settings(60)
@given(
    layout=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_patient_context_equals_a_loop_over_each_patients_other_studies(layout, seed):
    patient = np.array([f"p{p}" for p, _ in layout], dtype=object)
    study = np.array([f"p{p}s{s}" for p, s in layout], dtype=object)  # studies nest in patients
    values = np.random.default_rng(seed).normal(0, 2, (len(layout), 3)).round(1)  # with ties
    got, studies = patient_context(values, study, patient)
    expected, expected_studies = _context_by_loops(values, study, patient)
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(studies, expected_studies)


def test_features_hold_the_study_and_the_patients_other_studies():
    slices = _series({"a": 3, "b": 2, "c": 2})
    slices["study_uid"] = slices["series_uid"].map({"a": "A", "b": "B", "c": "C", "": ""})
    slices["patient_id"] = slices["series_uid"].map({"a": "P", "b": "P", "c": "Q", "": ""})
    values = pd.DataFrame(
        np.random.default_rng(3).normal(0, 2, (len(slices), len(LABELS))),
        index=slices.index,
        columns=list(LABELS),
    )
    x, names = stack_features({"run": values}, slices, neighbours=0)
    frame = pd.DataFrame(x, index=slices.index, columns=names)
    b = values.loc[["b_0", "b_1"], "any"]
    assert frame.loc["a_0", "r0_any_patient_others_max"] == pytest.approx(b.max(), rel=1e-6)
    assert frame.loc["a_2", "r0_any_patient_others_mean"] == pytest.approx(b.mean(), rel=1e-6)
    assert frame.loc["a_1", "r0_any_patient_others_above"] == (b > 0).sum()
    assert frame.loc["a_1", "r0_any_study_max"] == pytest.approx(values.loc[["a_0", "a_1", "a_2"], "any"].max(), rel=1e-6)  # fmt: skip
    assert np.isnan(frame.loc["c_0", "r0_any_patient_others_max"])  # Q has one study
    assert frame.loc["b_0", "patient_other_studies"] == 1
    assert frame.loc["lonely", "patient_other_studies"] == 0  # no patient: alone


@pytest.fixture()
def stacked(two_runs, tiny_work):
    root, truth, folds, _ = two_runs
    found = [read_run(root / "a"), read_run(root / "b")]
    params = StackParams(trees=20, leaves=4, min_child_samples=5)
    return (
        found,
        truth,
        folds,
        params,
        stack_found(found, truth, predictions.test_images(tiny_work), params=params),
    )


def test_each_fold_is_predicted_by_trees_that_never_saw_its_labels(stacked, tiny_work):
    found, truth, folds, params, (result, test) = stacked
    assert result.oof.index.equals(folds.index) and np.isfinite(result.oof.to_numpy()).all()
    k = int(folds.iloc[0])
    flipped = truth.copy()
    held = folds.index[folds == k]
    flipped.loc[held, list(LABELS)] = 1 - flipped.loc[held, list(LABELS)]
    again, _ = stack_found(found, flipped, predictions.test_images(tiny_work), params=params)
    pd.testing.assert_frame_equal(again.oof.loc[held], result.oof.loc[held])  # fold k unchanged
    others = folds.index[folds != k]
    assert not np.allclose(again.oof.loc[others], result.oof.loc[others])  # the rest learnt it
    same, _ = stack_found(found, truth, predictions.test_images(tiny_work), params=params)
    pd.testing.assert_frame_equal(same.oof, result.oof)  # deterministic
    assert test.index.equals(found[0].test.index) and test.notna().all().all()


def test_a_label_with_one_class_gets_its_training_mean_and_a_warning(stacked):
    found, truth, folds, params, _ = stacked
    none = truth.copy()
    none["epidural"] = 0.0
    logits = {r.name: r.oof for r in found}
    slices = pd.DataFrame({"series_uid": "", "slice_index": -1, "z": np.nan}, index=folds.index)
    with pytest.warns(DataWarning, match="epidural has one class only"):
        result = stack_runs(logits, logits, none, folds, slices, slices, params=params)
    assert sorted(result.constant["epidural"]) == sorted(int(k) for k in folds.unique())
    assert np.allclose(result.oof["epidural"], 1e-4)  # clipped as a prior is


def test_the_cli_stacks_and_missing_lightgbm_is_a_clear_error(
    two_runs, tiny_work, capsys, monkeypatch
):
    root, *_ = two_runs
    args = ["blend", str(root / "a"), str(root / "b"), "--work", str(tiny_work)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(
            [*args, "--out", str(root / "s"), "--stack", "lightgbm", "--neighbours", "1"]
        ) in (0, None)
    printed = capsys.readouterr().out
    assert "stack: LightGBM per label over ±1 slices" in printed
    report = json.loads((root / "s" / "evaluate.json").read_text())
    assert report["stack"] == "lightgbm" and report["params"]["neighbours"] == 1
    assert set(report["run_codes"].values()) == {"a", "b"}
    validate_submission(
        root / "s" / "submission.csv", predictions.test_images(tiny_work).sample_csv
    )
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as if not installed
    with pytest.raises(StackError, match=r"pip install 'rsna\[stack\]'"):
        blend_runs([root / "a", root / "b"], root / "t", work_dir=tiny_work, stack="lightgbm")
    with pytest.raises(StackError, match="Received: stack='xgboost'"):
        blend_runs([root / "a", root / "b"], root / "t", work_dir=tiny_work, stack="xgboost")
    assert main([*args, "--out", str(root / "u"), "--stack", "lightgbm"]) == 2
    assert "rsna: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"neighbours": -1}, "`neighbours` must be an integer in"),
        ({"trees": 0}, "`trees` must be an integer in"),
        ({"leaves": True}, "Received: leaves=True"),
        ({"learning_rate": 0.0}, "`learning_rate` must be in"),
        ({"l2": float("nan")}, "`l2` must be >= 0"),
    ],
)
def test_bad_stack_options_are_refused(bad, message):
    with pytest.raises(StackError, match=message):
        StackParams(**bad)
