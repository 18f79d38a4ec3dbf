"""rsna.smooth: the rolling mean along z against a hand computation, its edges, unreadable
slices, the weights' parser, and a smoothed run that evaluate and blend can read."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import fuzz_settings, tiny_experiment
from rsna import runs
from rsna.cli import main
from rsna.config import dump_config
from rsna.data.labels import LABELS
from rsna.errors import DataWarning
from rsna.evaluate import read_fold_oof
from rsna.metrics import logit, sigmoid
from rsna.smooth import (
    SMOOTHING,
    SmoothError,
    is_current,
    parse_weights,
    smooth_along_z,
    smooth_stage,
)
from rsna.submission import validate_submission


def _slices() -> pd.DataFrame:
    """Series A of 4 slices stored out of z order, series B of 1, and an image without one."""
    return pd.DataFrame(
        {
            "series_uid": ["A", "A", "A", "A", "B", ""],
            "slice_index": [2, 0, 3, 1, 0, -1],
            "readable": True,
        },
        index=pd.Index(["a2", "a0", "a3", "a1", "b0", "lone"], name="image_id"),
    )


def _frame(values: dict[str, float]) -> pd.DataFrame:
    """Every label of each image set to its value (the labels differ by a fixed offset)."""
    ids = list(values)
    base = np.array([values[i] for i in ids])[:, None] + np.linspace(0, 0.05, len(LABELS))
    return pd.DataFrame(base, index=pd.Index(ids, name="image_id"), columns=list(LABELS))


def test_the_rolling_mean_by_hand_with_the_edge_slice_repeated():
    p = _frame({"a0": 0.1, "a1": 0.5, "a2": 0.3, "a3": 0.7, "b0": 0.4, "lone": 0.2})
    got = smooth_along_z(p.loc[["a2", "a0", "a3", "a1", "b0", "lone"]], _slices())
    w = np.array(SMOOTHING) / sum(SMOOTHING)  # 0.2, 0.6, 0.2
    expected = {
        "a0": w @ [0.1, 0.1, 0.5],  # the first slice stands in for the one below it
        "a1": w @ [0.1, 0.5, 0.3],
        "a2": w @ [0.5, 0.3, 0.7],
        "a3": w @ [0.3, 0.7, 0.7],
        "b0": 0.4,  # a series of one slice
        "lone": 0.2,  # no series
    }
    offsets = np.linspace(0, 0.05, len(LABELS))
    for image, value in expected.items():
        np.testing.assert_allclose(got.loc[image].to_numpy(), value + offsets, rtol=1e-12)
    assert list(got.index) == ["a2", "a0", "a3", "a1", "b0", "lone"]


def test_logit_space_is_the_sigmoid_of_the_mean_logit():
    p = _frame({"a0": 0.1, "a1": 0.5, "a2": 0.3, "a3": 0.7, "b0": 0.4, "lone": 0.2})
    got = smooth_along_z(p, _slices(), weights=(1, 2, 1), space="logit")
    z = logit(np.array([0.1, 0.5, 0.3]))
    assert got.at["a1", LABELS[0]] == pytest.approx(sigmoid(z @ [0.25, 0.5, 0.25]))


def test_an_unreadable_slice_keeps_its_prior_and_pulls_no_neighbour():
    slices = _slices()
    slices.loc["a1", "readable"] = False
    p = _frame({"a0": 0.1, "a1": 0.9, "a2": 0.3, "a3": 0.7, "b0": 0.4, "lone": 0.2})
    got = smooth_along_z(p, slices)
    assert got.at["a1", LABELS[0]] == pytest.approx(0.9)
    assert got.at["a0", LABELS[0]] == pytest.approx(0.1)  # its upper neighbour is a1: itself
    assert got.at["a2", LABELS[0]] == pytest.approx(0.2 * 0.3 + 0.6 * 0.3 + 0.2 * 0.7)


def test_five_weights_reach_two_slices_and_a_single_weight_changes_nothing():
    p = _frame({"a0": 0.1, "a1": 0.5, "a2": 0.3, "a3": 0.7, "b0": 0.4, "lone": 0.2})
    got = smooth_along_z(p, _slices(), weights=(1, 1, 1, 1, 1))
    assert got.at["a1", LABELS[0]] == pytest.approx(np.mean([0.1, 0.1, 0.5, 0.3, 0.7]))
    pd.testing.assert_frame_equal(smooth_along_z(p, _slices(), weights=(3,)), p, check_names=False)


@fuzz_settings(60)
@given(
    values=st.lists(st.floats(0.001, 0.999), min_size=6, max_size=6),
    weights=st.lists(st.floats(0, 10), min_size=1, max_size=3).map(lambda h: [*h, *h[-2::-1]]),
)
def test_smoothing_stays_within_each_series_range(values, weights):
    """A weighted mean: never outside the series' own minimum and maximum."""
    if sum(weights) <= 0:
        weights = [1.0]
    p = _frame(dict(zip(["a0", "a1", "a2", "a3", "b0", "lone"], values, strict=True)))
    got = smooth_along_z(p, _slices(), weights=weights)
    series_a = p.loc[["a0", "a1", "a2", "a3"], LABELS[0]]
    inner = got.loc[["a0", "a1", "a2", "a3"], LABELS[0]]
    assert (inner >= series_a.min() - 1e-12).all() and (inner <= series_a.max() + 1e-12).all()
    np.testing.assert_allclose(got.loc[["b0", "lone"]], p.loc[["b0", "lone"]], rtol=1e-12)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2", "odd number"),
        ("0.6,-1,0.6", ">= 0"),
        ("0,0,0", "not all zero"),
        ("0.6,x,0.6", "comma-separated numbers"),
        ("nan", "finite"),
        ("", "comma-separated numbers"),
    ],
)
def test_bad_weights_are_refused_by_name(text, message):
    with pytest.raises(SmoothError, match=message):
        parse_weights(text)


@fuzz_settings(100)
@given(st.text(alphabet="0123456789.,-e naif", max_size=20))
def test_the_weights_parser_accepts_or_refuses_never_crashes(text):
    try:
        weights = parse_weights(text)
    except SmoothError:
        return
    assert len(weights) % 2 == 1 and min(weights) >= 0 and sum(weights) > 0


def test_a_smoothed_stage_is_a_run_of_its_own(two_runs, tiny_work):
    root, truth, folds, made = two_runs
    stage = root / "a"
    result = smooth_stage(stage, tiny_work)
    assert result.folder == stage / runs.SMOOTHED
    parts = read_fold_oof(result.folder)  # the stage's folds, each image once
    assert sorted(parts) == sorted(folds.unique())
    for k, part in parts.items():
        assert set(part.index) == set(folds.index[folds == k])
    from rsna.predictions import test_images

    metadata = test_images(tiny_work).metadata
    oof, _ = made[0]
    expected = smooth_along_z(oof, metadata)
    np.testing.assert_allclose(result.oof.loc[expected.index], expected, rtol=1e-12)
    sample = test_images(tiny_work).sample_csv
    validate_submission(result.folder / runs.SUBMISSION, sample)
    assert is_current(stage)
    fold_oof = runs.fold_dir(stage, int(folds.iloc[0])) / runs.OOF
    os.utime(fold_oof, ns=(1, 1))  # the stage's predictions changed after smoothing
    assert not is_current(stage)
    smooth_stage(stage, tiny_work, weights=(1, 1, 1))  # a rerun replaces the folder whole
    assert is_current(stage) and not any(p.name.startswith(".") for p in root.iterdir())


def test_a_stage_without_predictions_is_an_error(tmp_path, tiny_work):
    with pytest.raises(SmoothError, match="no fold_"):
        smooth_stage(tmp_path, tiny_work)


def test_rsna_postprocess_prints_both_scores_and_evaluate_shows_the_smoothed_stage(
    two_runs, tiny_work, capsys
):
    root, *_ = two_runs
    config = tiny_experiment(tiny_work, root / "a", name="smoothing")
    dump_config(config, root / "a" / runs.CONFIG_FILE)
    assert main(["postprocess", str(root / "a"), "--smooth", "1,2,1", "--space", "logit"]) == 0
    out = capsys.readouterr().out
    assert "stage 1 smoothed along z (1,2,1, logit): CV weighted log loss" in out
    assert (root / "a" / runs.SMOOTHED / runs.EVALUATE_JSON).is_file()
    assert main(["postprocess", str(root / "a"), "--smooth", "1,2"]) == 2
    assert "must be an odd number of weights" in capsys.readouterr().err
    shutil.copytree(root / "b", root / "a" / "stage2")  # run b stands in for a stage 2
    assert main(["evaluate", str(root / "a")]) == 0
    out = capsys.readouterr().out
    assert "stage 1 smoothed" in out and "stage 2 / smoothed" in out
    os.utime(root / "a" / "submission.csv", ns=(1, 1))
    with pytest.warns(DataWarning, match="made from older stage-1 predictions"):
        assert main(["evaluate", str(root / "a")]) == 0
    assert "stage 1 smoothed" not in capsys.readouterr().out
