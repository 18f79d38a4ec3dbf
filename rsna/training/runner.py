"""The runner: the one place that knows both stages, and dispatches to each.

``rsna train`` and ``rsna predict`` (and the demo) call these; a stage's own module
knows only its stage and the shared fold machinery.
"""

from __future__ import annotations

from collections.abc import Sequence

from rsna.config import Config
from rsna.predictions import PredictResult
from rsna.preflight import check_store, resolve_weights
from rsna.training import stage1, stage2
from rsna.training.fold import FoldResult, TrainError, fold_numbers

__all__ = ["STAGE_MODULES", "predict", "train"]

#: The module of each stage: ``train_fold(config, fold, ...)`` and ``predict_test(config)``.
STAGE_MODULES = {1: stage1, 2: stage2}


def _stage(stage: int):
    if stage not in STAGE_MODULES:
        raise TrainError(
            f"`stage` must be one of {sorted(STAGE_MODULES)}. Received: stage={stage!r}"
        )
    return STAGE_MODULES[stage]


def train(
    config: Config, folds: str | Sequence[int] = "all", *, stage: int = 1, **kwargs
) -> list[FoldResult]:
    """Train folds of `stage` one after the other (``"all"``, or a list of fold numbers).

    Stage 2 embeds with stage 1's fold models first where that is not done yet.
    `kwargs` go to the stage's ``train_fold`` (strategy, callbacks, force, verbose).
    Before any work, stage 1 checks its weights and its store (:mod:`rsna.preflight`).
    """
    module = _stage(stage)
    numbers = fold_numbers(config, folds)
    if stage == 1:
        config = resolve_weights(config)
        check_store(config)
    return [module.train_fold(config, k, **kwargs) for k in numbers]


def predict(config: Config, *, stage: int = 1, strategy=None) -> PredictResult:
    """Predict the test set with every fold model of `stage` (the slice models under
    `strategy`, on every device); write its submission. Stage 1 checks its store first."""
    if stage == 1:
        check_store(config)
    return _stage(stage).predict_test(config, strategy=strategy)
