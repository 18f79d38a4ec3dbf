"""One fold of either stage: the split, the resumable fit, and the fold's outputs.

Both stages train fold k on every other fold and validate on k, in
``<stage folder>/fold_k/`` (file names in :mod:`rsna.runs`)::

    best.keras       the best epoch by validation weighted log loss (written atomically)
    state.json       best value, best epoch, epochs without improvement, last epoch seen
    seeds.json       the random layers' seed-generator states at each epoch's end
    history.csv      one row per epoch: losses, the metric and each label's log loss
    backup/          BackupAndRestore's checkpoints while training (double checkpoint)
    oof.csv          image_id and six probabilities for fold k's images, from best.keras
    curves.png       loss and weighted log loss, train and validation; each label's validation loss
    tensorboard/     TensorBoard's event files (with ``train.tensorboard``)
    summary.json     the one-line summary, as data
    experiment.json  the config keys the fold was trained with (rsna.config.experiment_record)

A killed run resumes where it stopped: ``BackupAndRestore`` restores weights, optimizer
(and so the learning-rate schedule) and the epoch; :class:`~rsna.training.generator.EpochSync`
gives the resumed epochs the order and augmentation they would have had; and
:class:`FoldState` restores the best value and the early-stopping count that Keras's
own ``ModelCheckpoint`` and ``EarlyStopping`` would lose, so a worse epoch after a resume
never overwrites the best file. A finished or interrupted fold is reused only for the
same experiment: another value of a key that decides what it learns is an error naming
the key, and ``force`` (``--retrain``) trains it anew.

:func:`run_fold` is the skeleton every stage's fold goes through: skip a finished fold,
check and split it, seed, fit, predict the OOF images with the best model, and write the
outputs. The stages (:mod:`~rsna.training.stage1`, :mod:`~rsna.training.stage2`) give it
a :class:`FoldPlan`: their model, data and OOF prediction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.config import Config, dump_config, experiment_changes, experiment_record
from rsna.data.folds import FOLDS_FILE, read_folds
from rsna.data.labels import LABELS, prior
from rsna.data.metadata import read_prepared_labels
from rsna.errors import DataWarning, RsnaError
from rsna.metrics import per_label_log_loss, prior_predictions
from rsna.training.distributed import (
    DistributedError,
    SyncMovingStatistics,
    WorkerRole,
    agree,
    worker_role,
)
from rsna.training.generator import EpochSync
from rsna.training.losses import LabelLogLoss, WeightedBCE, WeightedLogLoss
from rsna.training.models import load_model, no_decay_variables
from rsna.training.precision import resolve_precision

__all__ = [
    "MONITOR",
    "WEIGHT_DECAY",
    "FoldPlan",
    "FoldResult",
    "FoldSplit",
    "FoldState",
    "SeedState",
    "Snapshots",
    "TrainError",
    "compile_fold_model",
    "config_folds",
    "cosine_decay",
    "fit_fold",
    "fold_numbers",
    "format_summary",
    "resume_epoch",
    "run_fold",
    "seed_run",
    "snapshot_files",
]

MONITOR = "val_weighted_log_loss"
#: AdamW's decoupled decay (Loshchilov & Hutter, arXiv:1711.05101), applied each step as
#: ``w -= lr * WEIGHT_DECAY * w``; Keras's own AdamW default is 0.004. Not tuned here.
WEIGHT_DECAY = 1e-4


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
    start_epoch: int = 0  # where a resumed fit starts (BackupAndRestore's record)


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
        steps_per_epoch, validation_steps: for endless datasets
            (:func:`rsna.training.distributed.replica_batches`), else None.
        epoch_source: the generator whose epoch :class:`EpochSync` sets, when
            `train_data` is not that generator itself.
        snapshots: keep the weights of this many last epochs (:class:`Snapshots`); 0: none.
    """

    model: keras.Model
    train_data: object
    valid_data: object
    epochs: int
    patience: int
    predict_oof: Callable[[keras.Model], tuple[pd.DataFrame, dict]]
    title: str
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    epoch_source: object = None
    snapshots: int = 0


def run_fold(
    config: Config,
    fold: int,
    *,
    stage: int,
    plan: Callable[[FoldSplit], FoldPlan],
    force: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    strategy=None,
) -> FoldResult:
    """Train fold `fold` of `stage` (resuming an interrupted fit) and write its outputs.

    Skips a finished fold unless `force`. Otherwise checks the fold, makes its folder,
    seeds with ``train.seed + fold``, builds ``plan(split)``, fits it
    (:func:`fit_fold`), predicts the OOF images with the best model and writes
    oof.csv, curves.png and summary.json (:func:`finish_fold`).

    Under a multi-worker `strategy` every worker fits together, and only the chief writes
    the fold folder and predicts the OOF images. Another worker resumes from the chief's
    folder and writes its own copies into a temporary folder, removed when the fit ends.

    Raises:
        TrainError: no folds file, or `fold` is not one of its folds (nothing is written).
        rsna.training.distributed.DistributedError: the workers disagree on where to
            start, or one of them was lost during the fit.
    """
    role = worker_role(strategy)  # the only worker unless the strategy is multi-worker
    fold_dir = config.fold_dir(fold, stage=stage)
    if force and role.chief and fold_dir.exists():
        shutil.rmtree(fold_dir)
    _same_experiment(config, fold_dir, stage=stage)
    if (fold_dir / runs.SUMMARY).exists():
        summary = files.read_json(fold_dir / runs.SUMMARY)
        oof = pd.read_csv(fold_dir / runs.OOF, index_col="image_id")
        print(f"{format_summary(summary)} (already trained; --retrain trains it anew)", flush=True)
        return FoldResult(fold, summary, oof)
    start = time.perf_counter()
    split = split_fold(config, fold)
    if config.train.tensorboard:  # refused before anything is written if not installed
        callbacks = [tensorboard_callback(fold_dir / runs.TENSORBOARD), *callbacks]
    own_dir = fold_dir if role.chief else _worker_copy(fold_dir, role, fresh=force)
    try:
        split = dataclasses.replace(split, start_epoch=resume_epoch(own_dir))
        seed_run(config.train.seed + fold, deterministic=config.train.deterministic)
        with _lost_workers(role):
            todo = plan(split)  # a model or data that cannot be built fails here, nothing written
            if role.chief:
                fold_dir.mkdir(parents=True, exist_ok=True)
                files.write_json(fold_dir / runs.EXPERIMENT, experiment_record(config, stage=stage))
                # The run's config.toml records the concrete precision that "auto" picks here.
                dump_config(resolve_precision(config)[0], config.run_dir / runs.CONFIG_FILE)
            agree(
                strategy,
                fold=fold,
                start_epoch=split.start_epoch,
                train_images=len(split.train_ids),
                valid_images=len(split.valid_ids),
            )
            best = fit_fold(
                todo,
                fold_dir=own_dir,
                start_epoch=split.start_epoch,
                callbacks=callbacks,
                verbose=verbose if role.chief else 0,
            )
    finally:
        if not role.chief:
            shutil.rmtree(own_dir, ignore_errors=True)
    if not role.chief:
        print(
            f"fold {fold}: trained as worker {role.rank}; the chief writes {fold_dir}", flush=True
        )
        return FoldResult(fold, {"fold": fold, "worker": role.rank}, pd.DataFrame())
    oof, extra = todo.predict_oof(best)
    return finish_fold(split, fold_dir, oof, title=todo.title, started=start, extra=extra)


def _same_experiment(config: Config, fold_dir: Path, *, stage: int) -> None:
    """Refuse to reuse or resume a fold that was trained with other values.

    Raises:
        TrainError: naming each key that differs, with the way out.
    """
    path = fold_dir / runs.EXPERIMENT
    if not path.is_file():
        if (fold_dir / runs.SUMMARY).exists():
            warnings.warn(
                f"{fold_dir}: trained by an older rsna that recorded no experiment.json; "
                "reused as it is (--retrain trains it anew)",
                DataWarning,
                stacklevel=3,
            )
        return
    changes = experiment_changes(files.read_json(path), config, stage=stage)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise TrainError(
            f"{fold_dir} was trained as another experiment ({shown}). Add --retrain to "
            "train it again with this config (its files are replaced), use another "
            "data.out_dir, or set the recorded values back"
        )


def resume_epoch(fold_dir: Path) -> int:
    """The epoch a fit in `fold_dir` resumes at: BackupAndRestore's record, else 0."""
    path = Path(fold_dir) / runs.BACKUP / runs.BACKUP_METADATA
    return int(files.read_json(path)["epoch"]) if path.exists() else 0


def _worker_copy(fold_dir: Path, role: WorkerRole, *, fresh: bool) -> Path:
    """A temporary fold folder for a worker that is not the chief, holding copies of the
    chief's resume files (none when `fresh`)."""
    own = Path(tempfile.mkdtemp(prefix=f"rsna-worker{role.rank}-{fold_dir.name}-"))
    if not fresh:
        for name in (runs.STATE, runs.SEEDS, runs.HISTORY):
            if (fold_dir / name).exists():
                shutil.copy2(fold_dir / name, own / name)
        if (fold_dir / runs.BACKUP).is_dir():
            shutil.copytree(fold_dir / runs.BACKUP, own / runs.BACKUP)
    return own


@contextlib.contextmanager
def _lost_workers(role: WorkerRole):
    """Turn TensorFlow's errors for a lost or silent worker into a :class:`DistributedError`."""
    if role.workers == 1:
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    ) as exc:
        lines = [line.strip() for line in str(exc.message).splitlines() if line.strip()]
        telling = [line for line in lines if any(k in line for k in _LOST)] or lines or [""]
        raise DistributedError(
            f"worker {role.rank} of {role.workers} lost the others during training "
            f"({type(exc).__name__}: {telling[0][:300]}). Restart every worker with the same "
            "command: the fold resumes from its last finished epoch"
        ) from exc


#: Words of TensorFlow's messages that say which worker went and how.
_LOST = ("unhealthy", "/job:", "reset by peer", "refused", "Socket closed", "timed out")


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


def snapshot_files(fold_dir: str | os.PathLike[str]) -> list[Path]:
    """The fold's epoch snapshots (``snapshots/epoch_<e>.weights.h5``), oldest first."""
    folder = Path(fold_dir) / runs.SNAPSHOTS
    return sorted(folder.glob("epoch_*.weights.h5")) if folder.is_dir() else []


class Snapshots(keras.callbacks.Callback):
    """Keep the weights of the last `keep` epochs, for prediction to average over (the
    2nd place's "Bag 5X" of epochs).

    Each epoch's weights are written atomically before the backup is (the callback runs
    before ``BackupAndRestore``), so a resumed fit never lacks an epoch it has passed;
    an epoch redone after a kill rewrites its own file. Older files are then removed.
    """

    def __init__(self, fold_dir: Path, *, keep: int) -> None:
        super().__init__()
        self.folder, self.keep = Path(fold_dir) / runs.SNAPSHOTS, keep

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"epoch_{epoch:03d}.weights.h5"
        tmp = self.folder / f".tmp{os.getpid()}_{epoch:03d}.weights.h5"  # Keras needs the suffix
        self.model.save_weights(tmp)
        os.replace(tmp, final)
        for old in snapshot_files(self.folder.parent)[: -self.keep]:
            old.unlink()


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
    """Compile for either stage: AdamW (its decay off for biases, norms and the context
    adapter: :func:`~rsna.training.models.no_decay_variables`), the weighted BCE loss with
    `label_weights`, and the competition metric and each label's log loss, weighted by the
    sample weights (a series mask, or none).

    Under ``mixed_float16`` the optimizer scales the loss dynamically (Keras wraps it only
    when the Model's own policy is mixed, and ours is float32 around a mixed backbone).
    """
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=WEIGHT_DECAY)
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=WeightedBCE(label_weights),
        weighted_metrics=[WeightedLogLoss(), *(LabelLogLoss(label) for label in LABELS)],
        jit_compile=jit_compile,
    )
    return model


def fit_fold(
    plan: FoldPlan,
    *,
    fold_dir: Path,
    start_epoch: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> keras.Model:
    """``model.fit`` of `plan` with the resumable callbacks of every stage; returns the
    best model.

    Resumes a killed fit (BackupAndRestore with a double checkpoint), keeps the best
    epoch and the early-stopping count across resumes (:class:`FoldState`), gives the
    training generator its epoch (:class:`EpochSync`) and the random layers their seed
    states (:class:`SeedState`), logs every epoch to history.csv, and stops on NaN. A
    resumed fit therefore ends exactly as an uninterrupted one. With several replicas,
    batch norm's statistics are averaged over them before each validation
    (:class:`~rsna.training.distributed.SyncMovingStatistics`). An endless dataset
    (``plan.steps_per_epoch``) must begin at `start_epoch`, the epoch the backup
    restores; a mismatch stops the fit. `callbacks` run after these.
    """
    state = FoldState(fold_dir, patience=plan.patience)
    model = plan.model
    if not state.stopped(plan.epochs):
        extra = [] if plan.steps_per_epoch is None else [_StartsAt(start_epoch)]
        if model.distribute_strategy.num_replicas_in_sync > 1:
            extra.append(SyncMovingStatistics(model.distribute_strategy))
        model.fit(
            plan.train_data,
            validation_data=plan.valid_data,
            epochs=plan.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            validation_steps=plan.validation_steps,
            shuffle=False,  # the generators own the order
            verbose=verbose,
            callbacks=[
                state,
                *([Snapshots(fold_dir, keep=plan.snapshots)] if plan.snapshots else []),
                keras.callbacks.BackupAndRestore(
                    str(fold_dir / runs.BACKUP), double_checkpoint=True
                ),
                *extra,
                HistoryLogger(fold_dir / runs.HISTORY),
                keras.callbacks.TerminateOnNaN(),
                EpochSync(plan.train_data if plan.epoch_source is None else plan.epoch_source),
                SeedState(fold_dir),
                *callbacks,
            ],
        )
    best = fold_dir / runs.BEST_MODEL
    return load_model(best) if best.exists() else model


class HistoryLogger(keras.callbacks.CSVLogger):
    """Keras's CSVLogger, appending a resumed fit under the columns already in the file.

    Keras's own takes its columns from the first epoch it logs and writes no header when
    it appends, so a fold resumed by an rsna that logs other metrics would shift every
    later value into the wrong column. Here a resumed fit keeps the file's columns; a
    metric the file lacks is left out and one it has but the fit does not log reads "NA".
    """

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), append=True)
        self.path = path

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.path.is_file() and self.path.stat().st_size:
            self.keys = list(pd.read_csv(self.path, nrows=0).columns.drop("epoch", errors="ignore"))


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    """Keras's TensorBoard callback writing each epoch's losses, per-label metrics and
    learning rate under `log_dir` (``train.tensorboard``).

    Raises:
        TrainError: the tensorboard package is not installed (it is not a TensorFlow
            dependency; ``pip install "rsna[tensorboard]"``).
    """
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise TrainError(
            "`train.tensorboard` = true needs the tensorboard package, which is not "
            'installed. Install it with: pip install "rsna[tensorboard]" (or set '
            "train.tensorboard = false)"
        )
    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False, update_freq="epoch")


class _StartsAt(keras.callbacks.Callback):
    """Stop a fit whose first epoch is not the one its endless dataset starts at."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.expected = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch != self.expected:
            raise TrainError(
                f"the fit resumed at epoch {epoch} but its data starts at epoch "
                f"{self.expected}; the backup changed while the fold was starting"
            )
        self.expected += 1


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
