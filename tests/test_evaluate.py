"""rsna.evaluate: per-fold scores, their spread, and when a difference counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsna.data.folds import read_folds
from rsna.data.labels import LABELS
from rsna.data.metadata import read_prepared_labels
from rsna.evaluate import evaluate, format_scores, significant
from rsna.metrics import per_label_log_loss, sigmoid


def test_significant_needs_the_mean_beyond_one_standard_deviation():
    difference = pd.DataFrame({"clear": [-0.02, -0.021, -0.019], "noise": [-0.02, 0.01, 0.005]})
    flags = significant(difference)
    assert flags.to_dict() == {"clear": True, "noise": False}
    assert not significant(difference.iloc[:1]).any()  # one fold has no spread to compare


def test_evaluate_reports_each_folds_score_and_their_spread(tiny_work, tmp_path):
    truth = read_prepared_labels(tiny_work)
    folds = read_folds(tiny_work / "folds.csv").loc[truth.index]
    rng = np.random.default_rng(0)
    z = np.where(truth.to_numpy() > 0, 2.0, -2.0) + rng.normal(0, 1.5, truth.shape)
    oof = pd.DataFrame(sigmoid(z), index=truth.index, columns=list(LABELS)).rename_axis("image_id")
    expected = {}
    for k in sorted(folds.unique()):
        (tmp_path / f"fold_{k}").mkdir()
        part = oof[folds == k]
        part.to_csv(tmp_path / f"fold_{k}" / "oof.csv")
        expected[k] = per_label_log_loss(truth.loc[part.index], part)
    result = evaluate(tmp_path, tiny_work)
    by_hand = pd.DataFrame.from_dict({int(k): v for k, v in expected.items()}, orient="index")
    pd.testing.assert_frame_equal(result.per_fold, by_hand.rename_axis("fold"), check_exact=False)
    assert result.scores["fold_std"].to_numpy() == pytest.approx(
        by_hand.std(ddof=1)[result.scores.index].to_numpy()
    )
    assert set(result.report["per_fold"]) == {str(k) for k in expected}
    assert "fold sd" in format_scores(result.scores)
