"""Stage 1, the slice model: train a fold, predict its OOF images, predict the test set.

* Training goes through the shared fold skeleton (:func:`rsna.training.fold.run_fold`):
  the slice model of :func:`~rsna.training.models.build_model`, cosine decay with linear
  warm-up, and the resumable fit.
* Test-time augmentation averages **probabilities** over the views in ``predict.tta``
  (:mod:`rsna.data.views`: flips, the transpose, a centre crop, seeded random crops),
  for the OOF predictions and the test set alike.
* The test set is predicted by every fold's ``best.keras`` (loaded with
  ``safe_mode=True``) and combined by :func:`rsna.predictions.assemble`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rsna import runs
from rsna.config import Config
from rsna.data.labels import LABELS
from rsna.data.sources import ImageSource
from rsna.data.views import expand_views
from rsna.predictions import (
    PredictError,
    PredictResult,
    assemble,
    test_images,
    with_prior,
    write_predictions,
)
from rsna.training.distributed import replica_batches, static_batches, worker_role
from rsna.training.fold import (
    FoldPlan,
    FoldResult,
    FoldSplit,
    compile_fold_model,
    cosine_decay,
    run_fold,
    snapshot_files,
)
from rsna.training.generator import DataGenerator, PaddedBatches, trim
from rsna.training.models import build_model, check_slice_model, load_model
from rsna.training.precision import resolve_precision
from rsna.training.strategy import choose_strategy

__all__ = [
    "fold_models",
    "fold_snapshots",
    "predict_images",
    "predict_test",
    "predict_views",
    "train_fold",
]


def train_fold(
    config: Config,
    fold: int,
    *,
    strategy=None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    force: bool = False,
    verbose: int | str = "auto",
) -> FoldResult:
    """Train the slice model of one fold (resuming if it was interrupted) and write its outputs.

    Raises:
        rsna.training.fold.TrainError: no folds file, or `fold` is not one of its folds.
    """

    config, precision = resolve_precision(config)
    active = strategy or choose_strategy()

    def plan(split: FoldSplit) -> FoldPlan:
        if verbose:
            print(f"{precision}; {worker_role(active).describe(active)}", flush=True)
        train_gen = _generator(config, split.train_ids, split.labels, train=True)
        valid_gen = _generator(config, split.valid_ids, split.labels, train=False)
        with active.scope():
            model = compile_fold_model(
                build_model(config, prior=split.prior),
                learning_rate=_schedule(config, len(train_gen)),
                label_weights=config.train.label_weights,
                precision=config.model.precision,
                jit_compile=config.train.jit_compile,
            )

        def predict_oof(best: keras.Model) -> tuple[pd.DataFrame, dict]:
            snapshots = fold_snapshots(config, split.fold)
            probs, unreadable = predict_images(best, split.valid_ids, config, snapshots=snapshots)
            index = pd.Index(split.valid_ids, name="image_id")
            oof = pd.DataFrame(probs, index=index, columns=list(LABELS))
            extra = {"train_images": len(train_gen.image_ids), "unreadable_given_prior": unreadable}
            return with_prior(oof, unreadable, split.prior), extra

        feed = {}
        if static_batches(active):  # each worker reads its share, in static shapes
            feed = {
                "train_data": replica_batches(active, train_gen, start_epoch=split.start_epoch),
                "valid_data": replica_batches(active, valid_gen),
                "steps_per_epoch": len(train_gen),
                "validation_steps": len(valid_gen),
                "epoch_source": train_gen,
            }
        planned = FoldPlan(
            model,
            train_gen,
            valid_gen,
            epochs=config.train.epochs,
            patience=config.train.patience,
            predict_oof=predict_oof,
            title=f"{config.name}, fold {split.fold}",
            snapshots=config.train.snapshots,
        )
        return dataclasses.replace(planned, **feed)

    return run_fold(
        config,
        fold,
        stage=1,
        plan=plan,
        force=force,
        callbacks=callbacks,
        verbose=verbose,
        strategy=active,
    )


def _schedule(config: Config, steps_per_epoch: int):
    """The learning rate of `config`: constant, or cosine decay with linear warm-up."""
    lr = config.train.effective_learning_rate
    if config.train.schedule == "constant":
        return lr
    return cosine_decay(
        lr,
        decay_steps=(config.train.epochs - config.train.warmup_epochs) * steps_per_epoch,
        alpha=config.train.min_learning_rate / lr,
        warmup_steps=config.train.warmup_epochs * steps_per_epoch,
    )


def _cpu_augment(config: Config) -> bool:
    """Does the training generator augment (on the CPU), or the model (``augment.device``)?"""
    return config.train.augment and not config.augment.device


def _sampling(config: Config) -> tuple[int, float] | None:
    """The training generator's study sampling (``train.sampling = "study"``), or None."""
    if config.train.sampling == "all":
        return None
    return config.train.per_study, config.train.centre_weight


def _generator(
    config: Config, ids: list[str], labels: pd.DataFrame, *, train: bool
) -> DataGenerator:
    return DataGenerator.from_config(
        config,
        ids,
        labels,
        batch_size=config.train.batch_size,
        shuffle=train,
        augment=config.augment if (train and _cpu_augment(config)) else None,
        seed=config.train.seed,
        sampling=_sampling(config) if train else None,
        workers=config.train.workers,
        use_multiprocessing=config.train.workers > 1,
    )


def predict_views(
    model: keras.Model,
    image_ids: list[str],
    config: Config,
    *,
    replicas: int = 1,
    snapshots: Sequence[Path] = (),
    weights_of: keras.Model | None = None,
    source: ImageSource | None = None,
) -> tuple[list, list[str]]:
    """The model's output for each TTA view of ``predict.tta`` (and with `snapshots`, for
    each snapshot's weights, loaded into `weights_of`, default `model`, in turn), and
    the unreadable IDs. The images come from `config`'s store (or DICOMs), or `source`.

    The batch size is ``predict.batch_size`` rounded up to a multiple of `replicas` (of
    the strategy the model was loaded under); the short last batch is padded, and the
    padding's outputs are dropped: each image is predicted exactly once.
    """
    outputs, unreadable = [], []
    batch = -(-config.predict.batch_size // replicas) * replicas  # a share for every replica
    given = {} if source is None else {"source": source}
    for snapshot in snapshots or [None]:
        if snapshot is not None:
            (weights_of or model).load_weights(snapshot)
        for view in expand_views(config.predict.tta):
            gen = DataGenerator.from_config(
                config, image_ids, batch_size=batch, to_fit=False, view=view, **given
            )
            padded = PaddedBatches(gen, rows=batch)
            outputs.append(trim(model.predict(padded, verbose=0), len(image_ids)))
            unreadable = sorted(set(gen.unreadable))
    return outputs, unreadable


def predict_images(
    model: keras.Model,
    image_ids: list[str],
    config: Config,
    *,
    replicas: int = 1,
    snapshots: Sequence[Path] = (),
) -> tuple[np.ndarray, list[str]]:
    """Probabilities (n, 6) averaged over the TTA views (and `snapshots`), and the
    unreadable IDs."""
    views, unreadable = predict_views(
        model, image_ids, config, replicas=replicas, snapshots=snapshots
    )
    return np.mean(views, axis=0, dtype=np.float64), unreadable


def fold_snapshots(config: Config, fold: int) -> list[Path]:
    """The snapshots a fold predicts with: none unless ``train.snapshots``.

    Raises:
        PredictError: the config asks for snapshots and the fold has none.
    """
    if not config.train.snapshots:
        return []
    found = snapshot_files(config.fold_dir(fold))
    if not found:
        raise PredictError(
            f"{config.fold_dir(fold)}: `train.snapshots = {config.train.snapshots}` but no "
            f"{runs.SNAPSHOTS}/epoch_*.weights.h5; retrain the fold (--retrain)"
        )
    return found[-config.train.snapshots :]


def fold_models(config: Config, *, stage: int = 1) -> dict[int, Path]:
    """Fold number -> the best checkpoint of every trained fold of `stage`, in fold order.

    Raises:
        PredictError: no fold has been trained.
    """
    folds = runs.fold_dirs(config.stage_dir(stage), holding=runs.BEST_MODEL)
    if not folds:
        raise PredictError(
            f"{config.stage_dir(stage)}: no trained fold ({runs.BEST_MODEL}); "
            f"run `rsna train{'' if stage == 1 else ' --stage 2'}` first"
        )
    return {k: folder / runs.BEST_MODEL for k, folder in folds.items()}


def predict_test(config: Config, *, write: bool = True, strategy=None) -> PredictResult:
    """Predict the sample submission's images with every fold's slice model; write the submission.

    Each model is loaded under `strategy` (default: :func:`choose_strategy`), so every GPU
    or TPU core predicts.

    Raises:
        PredictError: no trained folds, or no sample submission.
        rsna.submission.SubmissionError: the result would be invalid (nothing written).
    """
    start = time.perf_counter()
    test = test_images(config.data.work_dir)
    per_fold, unreadable = [], []
    models = fold_models(config)
    active = strategy or choose_strategy()
    replicas = active.num_replicas_in_sync
    for k, path in models.items():
        with active.scope():
            model = load_model(path)
        check_slice_model(model, config, path=path)
        probs, unreadable = predict_images(
            model, test.present, config, replicas=replicas, snapshots=fold_snapshots(config, k)
        )
        per_fold.append(probs)
        keras.backend.clear_session()
    predictions = assemble(test, per_fold, how=config.predict.ensemble, unreadable=unreadable)
    report = {
        "images": len(test.images),
        "folds": [path.parent.name for path in models.values()],
        "tta": [v.label for v in expand_views(config.predict.tta)],
        "snapshots": config.train.snapshots,
        "ensemble": config.predict.ensemble,
        "unreadable_given_prior": sorted(unreadable),
        "missing_files_given_prior": test.missing,
        "prior": dict(zip(LABELS, test.prior.tolist(), strict=True)),
        "mean_prediction": predictions.mean().to_dict(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not write:
        return PredictResult(predictions, config.run_dir / runs.SUBMISSION, report)
    return write_predictions(
        predictions, test, config.run_dir, clip=config.predict.clip, report=report
    )
