"""Stage 2, the series model: train a fold on stage 1's embeddings, predict the test set.

Every top RSNA solution gained most from looking at the whole series. Here each series'
slices, in z order, carry the stage-1 logits (and, with ``sequence.inputs``, the
features) plus their differences to the previous and next slice
(:func:`rsna.data.series.build_series`). A masked bidirectional GRU adds a learned
correction to the stage-1 logits (:func:`rsna.training.models.build_sequence_model`).

Training is per fold on the same ``folds.csv``, through the same fold skeleton and
resumable fit as stage 1, with the same outputs in ``RUN/stage2/fold_k/``. Each fold's
series come from the embeddings of the one slice model that never saw them. Optional TTA
runs the reversed series too. Stage-1 logits are comparable across folds; features are
not (each fold's model has its own feature space), so ``inputs = ["logits"]`` is the
safe default.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import pandas as pd

from rsna import runs
from rsna.config import Config
from rsna.data.labels import LABELS
from rsna.data.metadata import read_metadata
from rsna.data.series import Series, build_series, read_embeddings, slice_inputs
from rsna.metrics import PRIOR_EPS, logit
from rsna.predictions import (
    PredictError,
    PredictResult,
    assemble,
    test_images,
    write_predictions,
)
from rsna.training.embed import embed_fold
from rsna.training.fold import (
    FoldPlan,
    FoldResult,
    FoldSplit,
    compile_fold_model,
    config_folds,
    cosine_decay,
    fold_numbers,
    run_fold,
)
from rsna.training.generator import SeriesGenerator
from rsna.training.models import build_sequence_model, load_model
from rsna.training.stage1 import fold_models

__all__ = ["predict_frame", "predict_series", "predict_test", "series_of", "train_fold"]


def series_of(config: Config, embeddings: pd.DataFrame, metadata: pd.DataFrame, prior) -> Series:
    """The series inputs of `embeddings`, with `prior`'s logits for unreadable slices."""
    frame = slice_inputs(
        embeddings, inputs=config.sequence.inputs, prior_logits=logit(prior, eps=PRIOR_EPS)
    )
    return build_series(frame, metadata, position=config.sequence.position)


def _fold_series(config: Config, metadata: pd.DataFrame, prior: np.ndarray) -> Series:
    """Series built from each fold's own out-of-fold embeddings."""
    series = {}
    for k in fold_numbers(config):
        embeddings = read_embeddings(embed_fold(config, k)[runs.EMBED_OOF])
        series.update(series_of(config, embeddings, metadata, prior))
    return series


def train_fold(
    config: Config, fold: int, *, callbacks=(), force: bool = False, verbose="auto", strategy=None
) -> FoldResult:
    """Train stage 2 on the series of every fold but `fold`; validate and predict OOF on it.

    `strategy` is accepted for the runner's sake; the series model is small and trains
    under the default strategy, in float32.
    """

    def plan(split: FoldSplit) -> FoldPlan:
        series = _fold_series(config, read_metadata(config.data.work_dir), split.prior)
        folds = config_folds(config)
        fold_of = {uid: int(folds[ids[0]]) for uid, (ids, _) in series.items()}
        train_series = {u: s for u, s in series.items() if fold_of[u] != split.fold}
        valid_series = {u: s for u, s in series.items() if fold_of[u] == split.fold}
        seq = config.sequence
        train_gen = SeriesGenerator(
            train_series,
            split.labels,
            batch_size=seq.batch_size,
            shuffle=True,
            seed=config.train.seed,
            jitter=seq.jitter,
            position=seq.position,
        )
        width = next(iter(series.values()))[1].shape[1]
        model = compile_fold_model(
            build_sequence_model(config, width),
            learning_rate=cosine_decay(
                seq.learning_rate, decay_steps=seq.epochs * len(train_gen), alpha=0.05
            ),
            label_weights=config.train.label_weights,
        )
        extra = {"series_train": len(train_series), "series_valid": len(valid_series)}
        return FoldPlan(
            model,
            train_gen,
            SeriesGenerator(
                valid_series, split.labels, batch_size=seq.batch_size, position=seq.position
            ),
            epochs=seq.epochs,
            patience=seq.patience,
            predict_oof=lambda best: (predict_series(best, valid_series, config), extra),
            title=f"{config.name} stage 2, fold {split.fold}",
        )

    for k in fold_numbers(config):  # embed before the fold's seed: loading a model draws from it
        embed_fold(config, k, strategy=strategy)
    return run_fold(
        config, fold, stage=2, plan=plan, force=force, callbacks=callbacks, verbose=verbose
    )


def predict_frame(model: keras.Model, gen: SeriesGenerator) -> pd.DataFrame:
    """Per-image probabilities, indexed by image ID (any order in, the right rows out)."""
    rows, ids = [], []
    for index in range(len(gen)):
        probs = model.predict_on_batch(gen[index])
        for b, uid in enumerate(gen.batch_uids(index, epoch=gen.epoch)):
            series_ids = gen.series[uid][0]
            values = np.asarray(probs[b, : len(series_ids)])
            rows.append(values[::-1] if gen.reverse else values)
            ids.extend(series_ids)
    return pd.DataFrame(
        np.vstack(rows).astype(np.float64),
        index=pd.Index(ids, name="image_id"),
        columns=list(LABELS),
    )


def predict_series(model: keras.Model, series: Series, config: Config) -> pd.DataFrame:
    """Probabilities per image, averaged over the forward and (optionally) reversed series."""
    views = [False, True] if config.sequence.tta_reverse else [False]
    frames = [
        predict_frame(
            model,
            SeriesGenerator(
                series,
                batch_size=config.sequence.batch_size,
                reverse=r,
                position=config.sequence.position,
            ),
        )
        for r in views
    ]
    first = frames[0]
    return pd.DataFrame(
        np.mean([f.loc[first.index].to_numpy() for f in frames], axis=0),
        index=first.index,
        columns=list(LABELS),
    )


def predict_test(config: Config, *, write: bool = True, strategy=None) -> PredictResult:
    """Stage-2 test predictions: each fold's series model on its own slice model's test
    embeddings, averaged over folds, through the same validated submission writer.

    Raises:
        rsna.predictions.PredictError: no trained stage-2 fold (or a stage-1 fold without
            its stage-2 model), or no sample submission.
    """
    start = time.perf_counter()
    test = test_images(config.data.work_dir)
    second = fold_models(config, stage=2)
    per_fold, unreadable, used = [], set(), []
    for fold in fold_models(config):
        if fold not in second:
            missing = config.fold_dir(fold, stage=2) / runs.BEST_MODEL
            raise PredictError(f"{missing}: missing; run `rsna train CONFIG --stage 2` first")
        embeddings = read_embeddings(
            embed_fold(config, fold, test_ids=test.present, strategy=strategy)[runs.EMBED_TEST]
        )
        unreadable |= set(embeddings.index[~embeddings["readable"].to_numpy(bool)])
        series = series_of(config, embeddings, test.metadata, test.prior)
        probs = predict_series(load_model(second[fold]), series, config)
        per_fold.append(probs.loc[test.present].to_numpy())
        used.append(second[fold].parent.name)
        keras.backend.clear_session()
    predictions = assemble(
        test, per_fold, how=config.predict.ensemble, unreadable=sorted(unreadable)
    )
    report = {
        "stage": 2,
        "images": len(test.images),
        "folds": used,
        "tta_reverse": config.sequence.tta_reverse,
        "unreadable_given_prior": sorted(unreadable),
        "missing_files_given_prior": test.missing,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not write:
        return PredictResult(predictions, config.stage_dir(2) / runs.SUBMISSION, report)
    return write_predictions(
        predictions, test, config.stage_dir(2), clip=config.predict.clip, report=report, wide=False
    )
