"""rsna demo: the README's first command, end to end (slow)."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_demo_learns_the_planted_bleeds_and_stage_2_improves_on_stage_1(tmp_path):
    """The README's first command, end to end, both stages (about six minutes).

    The bounds hold with a margin on any CPU: a learned score changes with the instruction
    set and oneDNN, so the test asserts what the demo shows everywhere (both stages well
    below the prior and below the intensity baseline, stage 2 not worse than stage 1), not
    this machine's figures.
    """
    from rsna.demo import run_demo

    result = run_demo(tmp_path / "demo")
    evaluation = result["evaluation"]
    assert evaluation["ratio_to_prior"] <= 0.75, evaluation  # 0.61 here
    assert evaluation["ratio_to_baseline"] < 1.0, evaluation  # 0.86 here
    assert result["test_scores"]["stage 1"] < 0.6 * evaluation["prior_weighted_log_loss"]
    weighted = result["stages"].loc["weighted"]
    assert weighted["stage 2 / stage 1"] <= 1.05, result["stages"]  # 0.86 here
    assert weighted["stage 2 / baseline"] <= 0.9, result["stages"]  # 0.74 here
    # z-smoothing, the cheapest series model, helps stage 1 (0.90 here)
    assert weighted["stage 1 smoothed"] <= weighted["stage 1"], result["stages"]
    assert result["test_scores"]["stage 2"] <= 1.05 * result["test_scores"]["stage 1"]
    # per-fold spread is reported, and no fold collapses: each within 2x the best fold
    per_fold = pd.DataFrame(evaluation["per_fold"]).T["weighted"]
    assert per_fold.max() <= 2 * per_fold.min(), per_fold
    run = tmp_path / "demo" / "work" / "runs" / "demo"
    assert (run / "submission.csv").exists() and (run / "stage2" / "submission.csv").exists()
    assert (run / "stages.png").exists()
    # the external set: new patients in CQ500's layout, scored at study level (AUC 1.000 here)
    external = result["external"].loc["any"]
    assert external["auc"] >= 0.8 and external["auc_low"] <= external["auc"], result["external"]
    assert (tmp_path / "demo" / "external" / "external.json").exists()
