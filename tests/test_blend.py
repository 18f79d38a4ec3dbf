"""rsna.blend: weights on the simplex, a CV not fit on what it scores, and runs that must share folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rsna import predictions
from rsna.blend import (
    BlendError,
    blend_runs,
    choose_weighting,
    cross_validated_blend,
    fit_weights,
    read_run,
    read_submission,
    weights_for,
)
from rsna.cli import main
from rsna.data.labels import LABELS
from rsna.metrics import logit, sigmoid, weighted_log_loss
from rsna.submission import validate_submission


def test_fit_weights_finds_the_informative_run_and_stays_on_the_simplex():
    rng = np.random.default_rng(0)
    truth = rng.random(4000) < 0.3
    signal = np.where(truth, 2.0, -2.0) + rng.normal(0, 1.0, truth.size)
    noise = rng.normal(0, 1.0, truth.size)
    weights = fit_weights(np.stack([noise, signal], axis=1), truth.astype(float))
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights[1] > 0.9
    # two copies of one run: any split is optimal, the blend equals the run
    same = fit_weights(np.stack([signal, signal], axis=1), truth.astype(float))
    assert same.sum() == pytest.approx(1.0)
    assert fit_weights(signal[:, None], truth.astype(float)).tolist() == [1.0]


def test_shared_weights_minimise_the_metric_over_every_label():
    rng = np.random.default_rng(1)
    truth = (rng.random((3000, len(LABELS))) < 0.3).astype(float)
    good = np.where(truth > 0, 2.0, -2.0) + rng.normal(0, 1.0, truth.shape)
    poor = np.where(truth > 0, 2.0, -2.0) + rng.normal(0, 3.0, truth.shape)
    logits = np.stack([good, poor], axis=1)
    w = weights_for("shared", logits, truth)
    assert w.shape == (len(LABELS), 2) and np.allclose(w, w[0]) and w[0, 0] > 0.7
    best = weighted_log_loss(truth, sigmoid(np.einsum("nrl,lr->nl", logits, w)))
    for a in np.linspace(0, 1, 21):  # no point of a grid on the simplex does better
        grid = sigmoid(a * good + (1 - a) * poor)
        assert best <= weighted_log_loss(truth, grid) + 1e-9
    # label weights matter: all weight on one label fits that label alone
    only_any = np.eye(len(LABELS))[-1]
    np.testing.assert_allclose(
        fit_weights(logits, truth, label_weights=only_any),
        fit_weights(logits[:, :, -1], truth[:, -1]),
        atol=1e-4,
    )
    assert np.allclose(weights_for("equal", logits, truth), 0.5)
    with pytest.raises(BlendError, match="Received: 'best'"):
        weights_for("best", logits, truth)


def test_the_nested_choice_prefers_equal_weights_for_runs_of_one_recipe():
    rng = np.random.default_rng(2)
    n = 3000
    truth = (rng.random((n, len(LABELS))) < 0.3).astype(float)
    folds = np.repeat(np.arange(3), n // 3)
    signal = np.where(truth > 0, 2.0, -2.0)
    twins = np.stack([signal + rng.normal(0, 2.0, truth.shape) for _ in range(2)], axis=1)
    assert choose_weighting(twins, truth, folds) == "equal"
    lopsided = np.stack([twins[:, 0], rng.normal(0, 2.0, truth.shape)], axis=1)
    assert choose_weighting(lopsided, truth, folds) in ("shared", "per-label")
    assert choose_weighting(lopsided, truth, np.zeros(n)) == "equal"  # one fold: nothing to test


def test_read_run_round_trips_oof_folds_and_submission(two_runs):
    root, truth, folds, made = two_runs
    run = read_run(root / "a")
    pd.testing.assert_frame_equal(
        run.oof.sort_index(), made[0][0].sort_index(), check_exact=False, rtol=1e-12
    )
    assert run.folds.index.sort_values().equals(truth.index.sort_values())
    assert (run.folds.to_numpy() == folds.loc[run.folds.index].to_numpy()).all()
    test = read_submission(root / "a" / "submission.csv")
    assert np.allclose(test.loc[made[0][1].index].to_numpy(), made[0][1].to_numpy(), atol=1e-6)


def test_the_reported_cv_comes_from_weights_fitted_on_other_folds(two_runs):
    root, truth, folds, made = two_runs
    found = [read_run(root / "a"), read_run(root / "b")]
    result = cross_validated_blend(found, truth, weights="per-label")
    assert set(result.fold_weights) == set(folds.unique())
    assert result.weighting == "per-label" and set(result.fold_weighting.values()) == {"per-label"}
    # recompute one fold by hand from weights fitted without it
    k = int(folds.iloc[0])
    held = result.oof.index[folds.loc[result.oof.index] == k]
    for label in LABELS:
        others = folds.loc[result.oof.index] != k
        rows = result.oof.index[others]
        stack = np.stack([logit(r.oof.loc[rows, label].to_numpy()) for r in found], axis=1)
        w = fit_weights(stack, truth.loc[rows, label].to_numpy(float))
        assert np.allclose(w, result.fold_weights[k].loc[label].to_numpy(), atol=1e-6)
        mixed = sigmoid(
            np.stack([logit(r.oof.loc[held, label].to_numpy()) for r in found], axis=1) @ w
        )
        assert np.allclose(mixed, result.oof.loc[held, label].to_numpy(), atol=1e-9)
    # the better run dominates, and the blend is no worse than it (small tolerance for CV)
    assert (result.weights["a"] > result.weights["b"]).all()
    best = weighted_log_loss(truth.loc[result.oof.index], found[0].oof.loc[result.oof.index])
    assert weighted_log_loss(truth.loc[result.oof.index], result.oof) <= best * 1.02


def test_auto_chooses_each_folds_weighting_on_the_other_folds_only(two_runs):
    root, truth, folds, _ = two_runs
    found = [read_run(root / "a"), read_run(root / "b")]
    result = cross_validated_blend(found, truth)
    index = result.oof.index
    logits = np.stack([logit(r.oof.loc[index].to_numpy()) for r in found], axis=1)
    y = truth.loc[index, list(LABELS)].to_numpy(float)
    fold_of = folds.loc[index].to_numpy()
    for k, chosen in result.fold_weighting.items():
        others = fold_of != k
        assert chosen == choose_weighting(logits[others], y[others], fold_of[others])
        expected = weights_for(chosen, logits[others], y[others])
        np.testing.assert_allclose(result.fold_weights[k].to_numpy(), expected, atol=1e-6)
    assert result.weighting == choose_weighting(logits, y, fold_of)
    assert result.weighting != "equal"  # run b is much noisier than run a
    with pytest.raises(BlendError, match="`weights` must be one of"):
        cross_validated_blend(found, truth, weights="best")


def test_blend_runs_writes_a_valid_submission_and_the_cli_prints_it(two_runs, tiny_work, capsys):
    root, *_ = two_runs
    code = main(
        [
            "blend",
            str(root / "a"),
            str(root / "b"),
            "--out",
            str(root / "blend"),
            "--work",
            str(tiny_work),
            "--weights",
            "shared",
        ]
    )
    assert code in (0, None)
    printed = capsys.readouterr().out
    assert "blend CV" in printed and "weighting: shared for the test" in printed
    report = json.loads((root / "blend" / "evaluate.json").read_text())
    assert set(report["per_label"]) == {*LABELS, "weighted"} and "fold_weights" in report
    assert report["weighting"] == "shared" and set(report["fold_weighting"].values()) == {"shared"}
    weights = pd.DataFrame(report["weights"]).T
    assert np.allclose(weights.to_numpy(), weights.to_numpy()[0])  # one set for every label
    for name in ("oof.csv", "blend.png", "predictions_test.csv", "submission.csv"):
        assert (root / "blend" / name).is_file()
    validate_submission(
        root / "blend" / "submission.csv", predictions.test_images(tiny_work).sample_csv
    )


def test_runs_with_other_folds_or_too_few_runs_are_refused(two_runs, tiny_work, capsys):
    root, truth, folds, _ = two_runs
    moved = root / "moved"
    (root / "a").rename(moved)
    first = sorted(moved.glob("fold_*"))[:2]
    a = pd.read_csv(first[0] / "oof.csv")
    b = pd.read_csv(first[1] / "oof.csv")
    pd.concat([a, b.iloc[:1]]).to_csv(first[0] / "oof.csv", index=False)
    b.iloc[1:].to_csv(first[1] / "oof.csv", index=False)
    with pytest.raises(BlendError, match="do not share folds.csv: 1 images are in different folds"):
        blend_runs([moved, root / "b"], root / "out", work_dir=tiny_work)
    with pytest.raises(BlendError, match="at least 2 runs. Received: 1"):
        blend_runs([root / "b"], root / "out", work_dir=tiny_work)
    with pytest.raises(BlendError, match="named twice"):
        blend_runs([root / "b", root / "b"], root / "out", work_dir=tiny_work)
    assert (
        main(
            [
                "blend",
                str(root / "b"),
                str(root / "nothing"),
                "--out",
                str(root / "o2"),
                "--work",
                str(tiny_work),
            ]
        )
        == 2
    )
    assert (
        "rsna: error:" in (err := capsys.readouterr().err) and "nothing: no fold_*/oof.csv" in err
    )


def test_runs_with_the_same_folder_name_get_names_that_tell_them_apart():
    from pathlib import Path

    from rsna.blend import unique_names

    folders = [Path("/x/s1/runs/demo"), Path("/x/s2/runs/demo"), Path("/x/s1/runs/demo/stage2")]
    assert unique_names(folders) == ["s1/runs/demo", "s2/runs/demo", "runs/demo/stage2"]
    assert unique_names([Path("/a/b"), Path("/a/c")]) == ["b", "c"]


def test_a_stage_folder_finds_its_runs_work_folder_up_to_two_levels(tmp_path):
    from rsna.blend import run_work_dir
    from rsna.config import dump_config, load_config, with_paths
    from rsna.runs import CONFIG_FILE

    run = tmp_path / "runs" / "demo"
    (run / "stage2" / "smoothed").mkdir(parents=True)
    dump_config(with_paths(load_config("demo"), work_dir=tmp_path / "w"), run / CONFIG_FILE)
    for folder in (run, run / "smoothed", run / "stage2", run / "stage2" / "smoothed"):
        assert run_work_dir(folder) == tmp_path / "w"
    with pytest.raises(BlendError, match="pass --work"):
        run_work_dir(tmp_path / "elsewhere" / "a" / "b")
