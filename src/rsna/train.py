"""Fold training, out-of-fold predictions and the CV score.

``train_fold(config, k)`` trains on every fold but k and validates on k, writing to
``RUN/fold_k/``::

    best.keras       the best epoch by validation weighted log loss (written atomically)
    state.json       best value, best epoch, epochs without improvement, last epoch seen
    history.csv      one row per epoch (Keras CSVLogger)
    backup/          BackupAndRestore's checkpoints while training (double checkpoint)
    oof.csv          image_id and six probabilities for fold k's images, from best.keras
    curves.png       loss and weighted log loss, train and validation
    summary.json     the one-line summary, as data

A killed run resumes where it stopped: ``BackupAndRestore`` restores weights, optimizer
(and so the learning-rate schedule) and the epoch; :class:`~rsna.generator.EpochSync`
gives the resumed epochs the order and augmentation they would have had; and
:class:`FoldState` restores the best value and the early-stopping count that Keras's
own ``ModelCheckpoint`` and ``EarlyStopping`` would lose, so a worse epoch after a resume
never overwrites the best file. A finished fold is skipped unless ``force``.

The fold loop exists once: :func:`train_folds`. ``rsna evaluate`` merges the OOF files
and scores them against the prior.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd

from rsna import files
from rsna.config import Config, dump_config
from rsna.errors import RsnaError
from rsna.folds import FOLDS_FILE, read_folds
from rsna.generator import DataGenerator, EpochSync
from rsna.labels import LABELS
from rsna.metadata import read_prepared_labels
from rsna.metrics import WeightedBCE, WeightedLogLoss, per_label_log_loss, prior_predictions
from rsna.models import build_model, load_model
from rsna.predict import BEST_MODEL, config_generator, predict_images, with_prior

MONITOR = "val_weighted_log_loss"


class TrainError(RsnaError):
    """A fold cannot be trained or evaluated."""


def choose_strategy(name: str = "auto"):
    """A tf.distribute strategy: TPU if present, MirroredStrategy for 2+ GPUs, else default.

    Args:
        name: ``"auto"``, ``"default"``, ``"mirrored"`` (all GPUs, or all CPUs when there
            are no GPUs), or ``"tpu"``.
    """
    import tensorflow as tf

    if name == "tpu" or (name == "auto" and _tpu_present()):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="local" if _tpu_present() else None
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name not in ("auto", "default"):
        raise TrainError(f"`strategy` must be auto, default, mirrored or tpu. Received: {name!r}")
    return tf.distribute.get_strategy()


def _tpu_present() -> bool:
    return (
        bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))
        or Path("/dev/accel0").exists()
    )


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
        path = Path(fold_dir) / "state.json"
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
            with files.atomic_path(self.fold_dir / BEST_MODEL) as tmp:
                self.model.save(tmp)
        else:
            self.state["wait"] += 1
        self.state["last_epoch"] = epoch
        files.write_json(self.fold_dir / "state.json", self.state)
        if self.state["wait"] >= self.patience:
            self.model.stop_training = True


@dataclass(frozen=True)
class FoldResult:
    fold: int
    summary: dict
    oof: pd.DataFrame


def learning_rate(config: Config, steps_per_epoch: int):
    """The learning rate or schedule of `config` (cosine decay with linear warm-up)."""
    lr = config.train.learning_rate
    if config.train.schedule == "constant":
        return lr
    warmup = config.train.warmup_epochs * steps_per_epoch
    decay = max(1, (config.train.epochs - config.train.warmup_epochs) * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10 if warmup else lr,
        decay_steps=decay,
        alpha=config.train.min_learning_rate / lr,
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )


def train_fold(
    config: Config,
    fold: int,
    *,
    strategy=None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    force: bool = False,
    verbose: int | str = "auto",
) -> FoldResult:
    """Train one fold (resuming if it was interrupted) and write its outputs.

    Raises:
        TrainError: no folds file, or `fold` is not one of its folds.
    """
    start = time.perf_counter()
    fold_dir = config.fold_dir(fold)
    if force and fold_dir.exists():
        shutil.rmtree(fold_dir)
    if (fold_dir / "summary.json").exists():
        return _finished(fold_dir, fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, config.run_dir / "config.toml")
    folds = _read_folds(config)
    known = sorted(int(k) for k in folds.unique())
    if fold not in known:
        raise TrainError(f"`fold` must be one of {known}. Received: fold={fold}")
    labels = read_prepared_labels(config.data.work_dir)
    train_ids = folds.index[folds != fold].tolist()
    valid_ids = folds.index[folds == fold].tolist()
    prior = labels.loc[train_ids, list(LABELS)].mean().to_numpy()
    keras.utils.set_random_seed(config.train.seed + fold)

    strategy = strategy or choose_strategy()
    train_gen = _generator(config, train_ids, labels, train=True)
    valid_gen = _generator(config, valid_ids, labels, train=False)
    with strategy.scope():
        model = build_model(config, prior=prior)
        model.compile(
            optimizer=keras.optimizers.AdamW(
                learning_rate(config, len(train_gen)), weight_decay=1e-4
            ),
            loss=WeightedBCE(config.train.label_weights),
            metrics=[WeightedLogLoss()],
        )
    best = fit_fold(
        model,
        train_gen,
        valid_gen,
        fold_dir=fold_dir,
        epochs=config.train.epochs,
        patience=config.train.patience,
        callbacks=[EpochSync(train_gen), *callbacks],
        verbose=verbose,
    )
    probs, unreadable = predict_images(best, valid_ids, config)
    oof = pd.DataFrame(probs, index=pd.Index(valid_ids, name="image_id"), columns=list(LABELS))
    oof = with_prior(oof, unreadable, prior)
    return finish_fold(
        fold,
        fold_dir,
        oof,
        labels,
        train_ids=train_ids,
        title=f"{config.name}, fold {fold}",
        started=start,
        extra={"train_images": len(train_gen.image_ids), "unreadable_given_prior": unreadable},
    )


def finish_fold(
    fold: int,
    fold_dir: Path,
    oof: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    train_ids: Sequence[str],
    title: str,
    started: float,
    extra: dict | None = None,
) -> FoldResult:
    """Write a trained fold's oof.csv, curves.png and summary.json; print its summary."""
    files.write_csv(oof, fold_dir / "oof.csv", index=True)
    history = read_history(fold_dir / "history.csv")
    if len(history):
        from rsna.plots import plot_training_curves, save_figure

        save_figure(plot_training_curves(history, title=title), fold_dir / "curves.png")
    score = per_label_log_loss(labels.loc[oof.index], oof)
    baseline = per_label_log_loss(
        labels.loc[oof.index], prior_predictions(labels.loc[list(train_ids)], oof.index)
    )
    state = FoldState.load(fold_dir)
    summary = {
        "fold": fold,
        "train_images": len(train_ids),
        "valid_images": len(oof),
        "epochs_run": state["last_epoch"] + 1,
        "best_epoch": state["best_epoch"],
        "best_val_weighted_log_loss": state["best"],
        "oof_weighted_log_loss": score["weighted"],
        "prior_weighted_log_loss": baseline["weighted"],
        **(extra or {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    files.write_json(fold_dir / "summary.json", summary)
    print(format_summary(summary), flush=True)
    keras.backend.clear_session()
    return FoldResult(fold, summary, oof)


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
    epoch and the early-stopping count across resumes (:class:`FoldState`), logs every
    epoch to history.csv, and stops on NaN. `callbacks` run after these.
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
                keras.callbacks.BackupAndRestore(str(fold_dir / "backup"), double_checkpoint=True),
                keras.callbacks.CSVLogger(str(fold_dir / "history.csv"), append=True),
                keras.callbacks.TerminateOnNaN(),
                *callbacks,
            ],
        )
    return load_model(fold_dir / BEST_MODEL) if (fold_dir / BEST_MODEL).exists() else model


def train_folds(
    config: Config, folds: str | Sequence[int] = "all", *, stage: int = 1, **kwargs
) -> list:
    """Train several folds of a stage, one after the other: the project's one fold loop."""
    chosen = sorted(_read_folds(config).unique()) if folds == "all" else list(folds)
    if stage == 2:
        from rsna.sequence import train_sequence_fold as train_one
    elif stage == 1:
        train_one = train_fold
    else:
        raise TrainError(f"`stage` must be 1 or 2. Received: stage={stage}")
    return [train_one(config, int(k), **kwargs) for k in chosen]


def format_summary(summary: dict) -> str:
    return (
        f"fold {summary['fold']}: OOF weighted log loss {summary['oof_weighted_log_loss']:.4f} "
        f"(prior {summary['prior_weighted_log_loss']:.4f}), best epoch {summary['best_epoch'] + 1} "
        f"of {summary['epochs_run']}, {summary['train_images']} train / {summary['valid_images']} valid images, "
        f"{summary['seconds']:.0f} s"
    )


def read_history(path: Path) -> pd.DataFrame:
    """history.csv with one row per epoch (the last, if a resumed epoch was logged twice)."""
    if not Path(path).exists():
        return pd.DataFrame()
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def _finished(fold_dir: Path, fold: int) -> FoldResult:
    summary = files.read_json(fold_dir / "summary.json")
    oof = pd.read_csv(fold_dir / "oof.csv", index_col="image_id")
    print(f"{format_summary(summary)} (already trained; --force retrains)", flush=True)
    return FoldResult(fold, summary, oof)


def _read_folds(config: Config) -> pd.Series:
    path = Path(config.data.work_dir) / FOLDS_FILE
    if not path.exists():
        raise TrainError(f"{path}: missing; run `rsna folds {config.data.work_dir}` first")
    return read_folds(path)


def _generator(
    config: Config, ids: list[str], labels: pd.DataFrame, *, train: bool
) -> DataGenerator:
    return config_generator(
        config,
        ids,
        labels,
        batch_size=config.train.batch_size,
        shuffle=train,
        augment=config.augment if (train and config.train.augment) else None,
        seed=config.train.seed,
        workers=config.train.workers,
        use_multiprocessing=config.train.workers > 1,
    )


# ------------------------------------------------------------------------------ evaluate


@dataclass(frozen=True)
class Evaluation:
    oof: pd.DataFrame
    scores: pd.DataFrame  # rows: LABELS + weighted; columns: model, prior
    report: dict


def evaluate(run_dir: str | os.PathLike[str], work_dir: str | os.PathLike[str]) -> Evaluation:
    """Merge the folds' OOF predictions and score them against the prior.

    Writes ``RUN/oof.csv``, ``RUN/evaluate.json`` and ``RUN/roc_pr.png``.

    Raises:
        TrainError: no fold has OOF predictions.
    """
    run_dir = Path(run_dir)
    parts = sorted(run_dir.glob("fold_*/oof.csv"))
    if not parts:
        raise TrainError(f"{run_dir}: no fold_*/oof.csv; train some folds first")
    oof = pd.concat([pd.read_csv(p, index_col="image_id") for p in parts])
    labels = read_prepared_labels(work_dir).loc[oof.index]
    model = per_label_log_loss(labels, oof)
    prior = per_label_log_loss(labels, prior_predictions(read_prepared_labels(work_dir), oof.index))
    scores = pd.DataFrame({"model": model, "prior": prior})
    scores["ratio"] = scores["model"] / scores["prior"]
    report = {
        "folds": [p.parent.name for p in parts],
        "images": len(oof),
        "weighted_log_loss": model["weighted"],
        "prior_weighted_log_loss": prior["weighted"],
        "ratio_to_prior": model["weighted"] / prior["weighted"],
        "per_label": scores.to_dict(orient="index"),
    }
    files.write_csv(oof, run_dir / "oof.csv", index=True)
    files.write_json(run_dir / "evaluate.json", report)
    from rsna.plots import plot_roc_pr, save_figure

    save_figure(plot_roc_pr(labels, oof), run_dir / "roc_pr.png")
    return Evaluation(oof, scores, report)


def format_scores(scores: pd.DataFrame) -> str:
    lines = [f"{'label':18s} {'model':>8s} {'prior':>8s} {'ratio':>6s}"]
    for label, row in scores.iterrows():
        ratio = (
            f"{row['ratio']:6.2f}" if row["prior"] > 1e-6 else "   n/a"
        )  # no positives: no ratio
        lines.append(f"{label:18s} {row['model']:8.4f} {row['prior']:8.4f} {ratio}")
    return "\n".join(lines)
