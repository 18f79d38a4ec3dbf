"""Run folders: the name of every file a run writes, defined here once. NumPy/pandas only.

A run folder (``data.out_dir``, or ``WORK/runs/<config name>``) holds::

    config.toml               the resolved config of the run
    fold_<k>/                 stage 1 (the slice model) of fold k, see FOLD_FILES
    oof.csv, evaluate.json, roc_pr.png      the merged out-of-fold predictions and CV report
    stages.png                stage 1 and stage 2 side by side
    submission.csv, predictions_test.csv, predict_report.json     stage 1's test predictions
    stage2/                   the same layout for stage 2 (the series model)
    smoothed/, stage2/smoothed/   a stage smoothed along z (rsna postprocess): folds and submission

A stage's fold folder holds ``experiment.json``, ``best.keras``, ``state.json``, ``seeds.json``, ``history.csv``,
``backup/`` (while training), ``snapshots/`` (with ``train.snapshots``), ``tensorboard/`` (with ``train.tensorboard``), ``oof.csv``, ``curves.png`` and ``summary.json``; stage 1's
also the embeddings ``embed_oof.npz`` and ``embed_test.npz`` that stage 2 reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

__all__ = [
    "BACKUP",
    "BACKUP_METADATA",
    "BEST_MODEL",
    "BLEND_PNG",
    "CONFIG_FILE",
    "CURVES",
    "EMBED_OOF",
    "EMBED_TEST",
    "EVALUATE_JSON",
    "EXPERIMENT",
    "HISTORY",
    "OOF",
    "PREDICTIONS_TEST",
    "PREDICT_REPORT",
    "ROC_PR",
    "SEEDS",
    "SMOOTHED",
    "SNAPSHOTS",
    "STAGES",
    "STAGES_PNG",
    "STATE",
    "SUBMISSION",
    "SUMMARY",
    "TENSORBOARD",
    "fold_dir",
    "fold_dirs",
    "read_history",
    "stage_dir",
]

CONFIG_FILE = "config.toml"
BEST_MODEL = "best.keras"
STATE = "state.json"
SEEDS = "seeds.json"
HISTORY = "history.csv"
BACKUP = "backup"
SNAPSHOTS = "snapshots"  # in a fold folder: epoch_<e>.weights.h5 of the last train.snapshots epochs
BACKUP_METADATA = "training_metadata.json"  # in BACKUP, by keras.callbacks.BackupAndRestore
OOF = "oof.csv"
CURVES = "curves.png"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"  # in a fold folder: TensorBoard's event files (train.tensorboard)
EXPERIMENT = "experiment.json"  # what the fold was trained with (rsna.config.experiment_record)
EMBED_OOF, EMBED_TEST = "embed_oof.npz", "embed_test.npz"
EVALUATE_JSON = "evaluate.json"
ROC_PR = "roc_pr.png"
STAGES_PNG = "stages.png"
BLEND_PNG = "blend.png"
SUBMISSION = "submission.csv"
PREDICTIONS_TEST = "predictions_test.csv"
PREDICT_REPORT = "predict_report.json"
SMOOTHED = "smoothed"  # in a stage folder: its predictions smoothed along z (rsna.smooth)
#: The stages of a run, and the folder of each below the run folder.
STAGES: dict[int, str] = {1: "", 2: "stage2"}

_FOLD = re.compile(r"fold_(\d+)")


def stage_dir(run_dir: str | os.PathLike[str], stage: int) -> Path:
    """The folder of `stage` (1 or 2) in a run folder."""
    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {sorted(STAGES)}. Received: stage={stage!r}")
    return Path(run_dir) / STAGES[stage]


def fold_dir(stage_folder: str | os.PathLike[str], fold: int) -> Path:
    """The folder of fold `fold` in a stage's folder."""
    return Path(stage_folder) / f"fold_{int(fold)}"


def fold_dirs(stage_folder: str | os.PathLike[str], *, holding: str = "") -> dict[int, Path]:
    """Fold number -> folder, in fold order, for every ``fold_<k>`` folder of a stage.

    Args:
        stage_folder: a stage's folder (see :func:`stage_dir`).
        holding: keep only the folds whose folder holds this file (e.g. ``OOF``).
    """
    found = {}
    root = Path(stage_folder)
    if not root.is_dir():
        return found
    for child in root.iterdir():
        match = _FOLD.fullmatch(child.name)
        if match and child.is_dir() and (not holding or (child / holding).exists()):
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def read_history(path: str | os.PathLike[str]) -> pd.DataFrame:
    """history.csv with one row per epoch (the last, if a resumed epoch was logged twice)."""
    if not Path(path).exists():
        return pd.DataFrame()
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
