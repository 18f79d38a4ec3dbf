"""rsna demo: the README's first command, end to end (slow)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_demo_learns_the_planted_bleeds_and_stage_2_improves_on_stage_1(tmp_path):
    """The README's first command, end to end, both stages (about three minutes)."""
    from rsna.demo import run_demo

    result = run_demo(tmp_path / "demo")
    evaluation = result["evaluation"]
    assert evaluation["ratio_to_prior"] <= 0.6, evaluation
    assert result["test_scores"]["stage 1"] < evaluation["prior_weighted_log_loss"]
    weighted = result["stages"].loc["weighted"]
    assert weighted["stage 2 / stage 1"] <= 0.85, result["stages"]
    assert result["test_scores"]["stage 2"] < result["test_scores"]["stage 1"]
    run = tmp_path / "demo" / "work" / "runs" / "demo"
    assert (run / "submission.csv").exists() and (run / "stage2" / "submission.csv").exists()
    assert (run / "stages.png").exists()
