"""``rsna embed``: stage 1's slice models turned into stage 2's inputs.

Fold k's slice model, with its head removed, runs over fold k's own images (out of fold:
it never trained on them) and over the test images, averaged over stage 1's TTA views
(``predict.tta``), so stage 2 starts from the same quality as stage 1's predictions. It
writes the six ``logits`` per image and, when ``sequence.inputs`` has ``features``, the
pooled features, float16, to ``RUN/fold_k/embed_oof.npz`` and ``embed_test.npz``
(atomically). Logits alone are 12 bytes an image; EfficientNetB0's 1,280 features add
2,560, about 3.5 GB over the competition's folds. An existing file is reused, unless it
lacks the features that ``sequence.inputs`` now asks for (it is then redone, and said). A training image's embedding therefore always comes from the one model that
did not train on it: nothing leaks. :func:`rsna.data.series.read_embeddings` reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from rsna import files, runs
from rsna.config import Config
from rsna.predictions import PredictError, test_images
from rsna.preflight import check_store
from rsna.training.fold import config_folds, fold_numbers
from rsna.training.models import check_slice_model, load_model
from rsna.training.stage1 import fold_snapshots, predict_views
from rsna.training.strategy import choose_strategy

__all__ = ["EmbedError", "embed_fold", "embed_folds", "embed_images", "embedder_of", "pool_views"]


class EmbedError(PredictError):
    """A fold has no trained slice model to embed with."""


def embed_fold(
    config: Config, fold: int, *, test_ids: Sequence[str] | None = None, strategy=None
) -> dict[str, Path]:
    """Write fold `fold`'s out-of-fold (and, given `test_ids`, test) embeddings; reuse
    files already written. Returns file name -> path. The model runs under `strategy`
    (default: :func:`choose_strategy`), on every GPU or TPU core."""
    fold_dir = config.fold_dir(fold)
    if not (fold_dir / runs.BEST_MODEL).exists():
        raise EmbedError(f"{fold_dir}: no {runs.BEST_MODEL}; train stage 1 of fold {fold} first")
    folds = config_folds(config)
    jobs = {runs.EMBED_OOF: folds.index[folds == fold].tolist()}
    if test_ids is not None:
        jobs[runs.EMBED_TEST] = list(test_ids)
    keep = "features" in config.sequence.inputs
    todo = {name: ids for name, ids in jobs.items() if not _usable(fold_dir / name, keep)}
    if todo:
        active = strategy or choose_strategy()
        with active.scope():
            model = load_model(fold_dir / runs.BEST_MODEL)
            check_slice_model(model, config, path=fold_dir / runs.BEST_MODEL)
            embedder = embedder_of(model)
        snapshots = fold_snapshots(config, fold)
        for name, ids in todo.items():
            embed_images(
                embedder,
                ids,
                config,
                fold_dir / name,
                replicas=active.num_replicas_in_sync,
                features=keep,
                snapshots=snapshots,
                weights_of=model,
            )
        keras.backend.clear_session()
    return {name: fold_dir / name for name in jobs}


def embedder_of(model: keras.Model) -> keras.Model:
    """A slice model cut before its sigmoid: its ``(features, logits)`` outputs."""
    outputs = [model.get_layer("features").output, model.get_layer("logits").output]
    return keras.Model(model.input, outputs)


def _usable(path: Path, features: bool) -> bool:
    """True if `path` exists and holds features when they are wanted."""
    if not path.exists():
        return False
    if not features:
        return True
    with np.load(path, allow_pickle=False) as data:
        if data["features"].shape[1] > 0:
            return True
    print(f"{path}: holds logits only; sequence.inputs asks for features, so it is redone")
    return False


def embed_images(
    embedder: keras.Model,
    ids: list[str],
    config: Config,
    path: Path,
    *,
    replicas: int = 1,
    features: bool = True,
    snapshots: Sequence[Path] = (),
    weights_of: keras.Model | None = None,
) -> None:
    """Write the logits of `ids` (and with `features`, the pooled features), averaged over
    the TTA views of ``predict.tta`` and the `snapshots` (weights loaded into
    `weights_of`, the model `embedder` is cut from), to an embeddings file (npz, no
    pickle) at `path`; without `features` its ``features`` array has no columns."""
    views, unreadable = predict_views(
        embedder, ids, config, replicas=replicas, snapshots=snapshots, weights_of=weights_of
    )
    pooled, logits = pool_views(views, features=features)
    readable = ~np.isin(ids, unreadable)
    with files.atomic_path(path) as tmp:
        np.savez(
            tmp,
            ids=np.array(ids, dtype=str),
            features=pooled.astype(np.float16),
            logits=logits.astype(np.float16),
            readable=readable,
        )


def pool_views(views: list, *, features: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The features (no columns without `features`) and logits of an embedder's
    ``(features, logits)`` outputs, averaged over views and snapshots."""
    pooled = np.mean([f for f, _ in views], axis=0)
    logits = np.mean([g for _, g in views], axis=0)
    return (pooled if features else pooled[:, :0]), logits


def embed_folds(
    config: Config, folds: str | Sequence[int] = "all", *, strategy=None
) -> list[dict[str, Path]]:
    """``rsna embed``: out-of-fold and (when there is a sample submission) test embeddings.
    The store is checked first (:func:`rsna.preflight.check_store`)."""
    numbers = fold_numbers(config, folds)
    check_store(config)
    try:
        test_ids = test_images(config.data.work_dir).present
    except PredictError:
        test_ids = None
    strategy = strategy or choose_strategy()
    return [embed_fold(config, k, test_ids=test_ids, strategy=strategy) for k in numbers]
