"""One fold of either stage: the split, the resumable fit, and the fold's outputs.

Both stages train fold k on every other fold and validate on k, in
``<stage folder>/fold_k/`` (file names in :mod:`rsna.runs`)::

    best.keras       the best epoch by validation weighted log loss (written atomically)
    state.json       best value, best epoch, epochs without improvement, last epoch seen
    seeds.json       the random layers' seed-generator states at each epoch's end
    history.csv      one row per epoch (Keras CSVLogger)
    backup/          BackupAndRestore's checkpoints while training (double checkpoint)
    oof.csv          image_id and six probabilities for fold k's images, from best.keras
    curves.png       loss and weighted log loss, train and validation
    summary.json     the one-line summary, as data

A killed run resumes where it stopped: ``BackupAndRestore`` restores weights, optimizer
(and so the learning-rate schedule) and the epoch; :class:`~rsna.training.generator.EpochSync`
gives the resumed epochs the order and augmentation they would have had; and
:class:`FoldState` restores the best value and the early-stopping count that Keras's
own ``ModelCheckpoint`` and ``EarlyStopping`` would lose, so a worse epoch after a resume
never overwrites the best file. A finished fold is skipped unless ``force``.

:func:`run_fold` is the skeleton every stage's fold goes through: skip a finished fold,
check and split it, seed, fit, predict the OOF images with the best model, and write the
outputs. The stages (:mod:`~rsna.training.stage1`, :mod:`~rsna.training.stage2`) give it
a :class:`FoldPlan`: their model, data and OOF prediction.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.config import Config, dump_config
from rsna.data.folds import FOLDS_FILE, read_folds
from rsna.data.labels import prior
from rsna.data.metadata import read_prepared_labels
from rsna.errors import RsnaError
from rsna.metrics import per_label_log_loss, prior_predictions
from rsna.training.generator import EpochSync
from rsna.training.losses import WeightedBCE, WeightedLogLoss
from rsna.training.models import load_model
from rsna.training.precision import resolve_precision

__all__ = [
    "MONITOR",
    "FoldPlan",
    "FoldResult",
    "FoldSplit",
    "FoldState",
    "SeedState",
    "TrainError",
    "compile_fold_model",
    "config_folds",
    "cosine_decay",
    "fit_fold",
    "fold_numbers",
    "format_summary",
    "run_fold",
    "seed_run",
]

MONITOR = "val_weighted_log_loss"


class TrainError(RsnaError):
    """A fold cannot be trained or evaluated."""


@dataclass(frozen=True)
class FoldResult:
    fold: int
    summary: dict
    oof: pd.DataFrame


@dataclass(frozen=True)
class FoldSplit:
    """Fold `fold`'s training and validation images, their labels and the training prior."""

    fold: int
    train_ids: list[str]
    valid_ids: list[str]
    labels: pd.DataFrame  # every labelled image
    prior: np.ndarray  # per-label mean over train_ids


def config_folds(config: Config) -> pd.Series:
    """The fold of every labelled image, from ``WORK/folds.csv``.

    Raises:
        TrainError: no folds file.
    """
    path = Path(config.data.work_dir) / FOLDS_FILE
    if not path.exists():
        raise TrainError(f"{path}: missing; run `rsna folds {config.data.work_dir}` first")
    return read_folds(path)


def fold_numbers(config: Config, folds: str | Sequence[int] = "all") -> list[int]:
    """The folds to run: every fold of ``folds.csv`` for ``"all"``, else `folds`, checked.

    Raises:
        TrainError: a fold that ``folds.csv`` does not have.
    """
    known = sorted(int(k) for k in config_folds(config).unique())
    if folds == "all":
        return known
    chosen = [int(k) for k in folds]
    for fold in chosen:
        if fold not in known:
            raise TrainError(f"`fold` must be one of {known}. Received: fold={fold}")
    return chosen


def split_fold(config: Config, fold: int) -> FoldSplit:
    """Fold `fold`'s split (see :class:`FoldSplit`)."""
    (fold,) = fold_numbers(config, [fold])
    folds = config_folds(config)
    labels = read_prepared_labels(config.data.work_dir)
    train_ids = folds.index[folds != fold].tolist()
    valid_ids = folds.index[folds == fold].tolist()
    return FoldSplit(fold, train_ids, valid_ids, labels, prior(labels.loc[train_ids]).to_numpy())


@dataclass(frozen=True)
class FoldPlan:
    """What a stage trains in one fold, for :func:`run_fold`.

    Attributes:
        model: the compiled model.
        train_data: the training generator (it must have ``set_epoch``).
        valid_data: the validation data.
        epochs: most epochs to run.
        patience: epochs without improvement before stopping.
        predict_oof: the best model -> OOF probabilities of the fold's images, indexed by
            image ID, and extra fields for ``summary.json``.
        title: the title of the fold's curves.
    """

    model: keras.Model
    train_data: object
    valid_data: object
    epochs: int
    patience: int
    predict_oof: Callable[[keras.Model], tuple[pd.DataFrame, dict]]
    title: str


def run_fold(
    config: Config,
    fold: int,
    *,
    stage: int,
    plan: Callable[[FoldSplit], FoldPlan],
    force: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> FoldResult:
    """Train fold `fold` of `stage` (resuming an interrupted fit) and write its outputs.

    Skips a finished fold unless `force`. Otherwise checks the fold, makes its folder,
    seeds with ``train.seed + fold``, builds ``plan(split)``, fits it
    (:func:`fit_fold`), predicts the OOF images with the best model and writes
    oof.csv, curves.png and summary.json (:func:`finish_fold`).

    Raises:
        TrainError: no folds file, or `fold` is not one of its folds (nothing is written).
    """
    fold_dir = config.fold_dir(fold, stage=stage)
    if force and fold_dir.exists():
        shutil.rmtree(fold_dir)
    if (fold_dir / runs.SUMMARY).exists():
        summary = files.read_json(fold_dir / runs.SUMMARY)
        oof = pd.read_csv(fold_dir / runs.OOF, index_col="image_id")
        print(f"{format_summary(summary)} (already trained; --force retrains)", flush=True)
        return FoldResult(fold, summary, oof)
    start = time.perf_counter()
    split = split_fold(config, fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    # The run's config.toml records the concrete precision that "auto" picks here.
    dump_config(resolve_precision(config)[0], config.run_dir / runs.CONFIG_FILE)
    seed_run(config.train.seed + fold, deterministic=config.train.deterministic)
    todo = plan(split)
    best = fit_fold(
        todo.model,
        todo.train_data,
        todo.valid_data,
        fold_dir=fold_dir,
        epochs=todo.epochs,
        patience=todo.patience,
        callbacks=callbacks,
        verbose=verbose,
    )
    oof, extra = todo.predict_oof(best)
    return finish_fold(split, fold_dir, oof, title=todo.title, started=start, extra=extra)


class FoldState(keras.callbacks.Callback):
    """Best checkpoint and early stopping whose state survives a killed run.

    Keras writes ``ModelCheckpoint`` files in place and forgets the best value and the
    early-stopping count on resume. This callback keeps both in ``state.json``, writes
    the best model atomically, and ignores an epoch it has already counted (one that is
    redone after a kill between its end and the backup).
    """

    def __init__(self, fold_dir: Path, *, patience: int, monitor: str = MONITOR) -> None:
        super().__init__()
        self.fold_dir, self.patience, self.monitor = Path(fold_dir), patience, monitor
        self.state = self.load(self.fold_dir)

    @staticmethod
    def load(fold_dir: Path) -> dict:
        path = Path(fold_dir) / runs.STATE
        if path.exists():
            return files.read_json(path)
        return {"best": math.inf, "best_epoch": -1, "wait": 0, "last_epoch": -1}

    def stopped(self, epochs: int) -> bool:
        """True when a previous run already finished or stopped early."""
        return self.state["last_epoch"] >= epochs - 1 or self.state["wait"] >= self.patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch <= self.state["last_epoch"]:
            return
        value = float((logs or {}).get(self.monitor, math.nan))
        if math.isfinite(value) and value < self.state["best"]:
            self.state.update(best=value, best_epoch=epoch, wait=0)
            with files.atomic_path(self.fold_dir / runs.BEST_MODEL) as tmp:
                self.model.save(tmp)
        else:
            self.state["wait"] += 1
        self.state["last_epoch"] = epoch
        files.write_json(self.fold_dir / runs.STATE, self.state)
        if self.state["wait"] >= self.patience:
            self.model.stop_training = True


class SeedState(keras.callbacks.Callback):
    """Keep the state of every random layer's seed generator (dropout) across a resume.

    ``BackupAndRestore`` saves the weights and the optimizer, not the seed generators'
    states, so a resumed epoch would draw other dropout masks. This records every
    state at each epoch's end in ``seeds.json``, by epoch, and puts the previous
    epoch's states back at an epoch's start. An uninterrupted run is unchanged (it puts
    back what is already there); a resumed one continues the same draws. Keeping every
    epoch's record leaves no window between this file and the backup: a run killed
    between the two restarts an epoch whose starting states are on record.
    """

    def __init__(self, fold_dir: Path) -> None:
        super().__init__()
        self.path = Path(fold_dir) / runs.SEEDS
        self.record = files.read_json(self.path) if self.path.exists() else {}

    def _states(self) -> list:
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        saved = self.record.get(str(epoch - 1))
        if saved is not None:
            for state, values in zip(self._states(), saved, strict=True):
                state.assign(np.array(values, dtype=state.dtype))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        states = [keras.ops.convert_to_numpy(v).tolist() for v in self._states()]
        self.record[str(epoch)] = states
        files.write_json(self.path, self.record)


def seed_run(seed: int, *, deterministic: bool) -> None:
    """Seed Python, NumPy and the backend; `deterministic` also makes TF's ops deterministic.

    Op determinism (``tf.config.experimental.enable_op_determinism``) is process-wide; it
    is switched to match each run. It fixes the order of reductions, not the CPU's
    instruction set, so the same bits come back on the same machine only.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(seed)
    if deterministic != tf_config.is_op_determinism_enabled():
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()


def cosine_decay(
    peak: float, *, decay_steps: int, alpha: float, warmup_steps: int = 0
) -> keras.optimizers.schedules.CosineDecay:
    """Cosine decay from `peak` to ``alpha * peak`` over `decay_steps`, after a linear
    warm-up from ``peak / 10`` over `warmup_steps` (none when 0)."""
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10 if warmup_steps else peak,
        decay_steps=max(1, decay_steps),
        alpha=alpha,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def compile_fold_model(
    model: keras.Model,
    *,
    learning_rate,
    label_weights,
    precision: str = "float32",
    jit_compile: str | bool = "auto",
) -> keras.Model:
    """Compile for either stage: AdamW, the weighted BCE loss with `label_weights`, and
    the competition metric weighted by the sample weights (a series mask, or none).

    Under ``mixed_float16`` the optimizer scales the loss dynamically (Keras wraps it only
    when the Model's own policy is mixed, and ours is float32 around a mixed backbone).
    """
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=1e-4)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=WeightedBCE(label_weights),
        weighted_metrics=[WeightedLogLoss()],
        jit_compile=jit_compile,
    )
    return model


def fit_fold(
    model: keras.Model,
    train_data,
    valid_data,
    *,
    fold_dir: Path,
    epochs: int,
    patience: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> keras.Model:
    """``model.fit`` with the resumable callbacks of every stage; returns the best model.

    Resumes a killed fit (BackupAndRestore with a double checkpoint), keeps the best
    epoch and the early-stopping count across resumes (:class:`FoldState`), gives the
    training generator its epoch (:class:`EpochSync`) and the random layers their seed
    states (:class:`SeedState`), logs every epoch to history.csv, and stops on NaN. A
    resumed fit therefore ends exactly as an uninterrupted one. `callbacks` run after
    these.
    """
    state = FoldState(fold_dir, patience=patience)
    if not state.stopped(epochs):
        model.fit(
            train_data,
            validation_data=valid_data,
            epochs=epochs,
            shuffle=False,  # the generators own the order
            verbose=verbose,
            callbacks=[
                state,
                keras.callbacks.BackupAndRestore(
                    str(fold_dir / runs.BACKUP), double_checkpoint=True
                ),
                keras.callbacks.CSVLogger(str(fold_dir / runs.HISTORY), append=True),
                keras.callbacks.TerminateOnNaN(),
                EpochSync(train_data),
                SeedState(fold_dir),
                *callbacks,
            ],
        )
    best = fold_dir / runs.BEST_MODEL
    return load_model(best) if best.exists() else model


def finish_fold(
    split: FoldSplit,
    fold_dir: Path,
    oof: pd.DataFrame,
    *,
    title: str,
    started: float,
    extra: dict | None = None,
) -> FoldResult:
    """Write a trained fold's oof.csv, curves.png and summary.json; print its summary."""
    files.write_csv(oof, fold_dir / runs.OOF, index=True)
    history = runs.read_history(fold_dir / runs.HISTORY)
    if len(history):
        from rsna.plots import plot_training_curves

        files.save_figure(plot_training_curves(history, title=title), fold_dir / runs.CURVES)
    labels = split.labels
    score = per_label_log_loss(labels.loc[oof.index], oof)
    baseline = per_label_log_loss(
        labels.loc[oof.index], prior_predictions(labels.loc[split.train_ids], oof.index)
    )
    state = FoldState.load(fold_dir)
    summary = {
        "fold": split.fold,
        "train_images": len(split.train_ids),
        "valid_images": len(oof),
        "epochs_run": state["last_epoch"] + 1,
        "best_epoch": state["best_epoch"],
        "best_val_weighted_log_loss": state["best"],
        "oof_weighted_log_loss": score["weighted"],
        "prior_weighted_log_loss": baseline["weighted"],
        **(extra or {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    files.write_json(fold_dir / runs.SUMMARY, summary)
    print(format_summary(summary), flush=True)
    keras.backend.clear_session()
    return FoldResult(split.fold, summary, oof)


def format_summary(summary: dict) -> str:
    """A fold's summary.json as one line."""
    return (
        f"fold {summary['fold']}: OOF weighted log loss {summary['oof_weighted_log_loss']:.4f} "
        f"(prior {summary['prior_weighted_log_loss']:.4f}), best epoch {summary['best_epoch'] + 1} "
        f"of {summary['epochs_run']}, {summary['train_images']} train / {summary['valid_images']} valid images, "
        f"{summary['seconds']:.0f} s"
    )
