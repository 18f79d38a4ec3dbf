"""Stage 2: a sequence model over each series, on the slice model's outputs.

Every top RSNA solution gained most from looking at the whole series. Here:

1. **Embeddings** (``rsna embed``). Fold k's slice model, with its head removed, runs
   over fold k's own images (out of fold: it never trained on them) and over the test
   images, averaged over stage 1's TTA views. It writes the pooled ``features`` and the
   six ``logits`` per image, float16, to ``RUN/fold_k/embed_oof.npz`` and
   ``embed_test.npz`` (atomically; an existing file is reused). A training image's
   embedding therefore always comes from the one model that did not train on it:
   nothing leaks.
2. **Inputs per slice**, in z order: the logits (and, with ``sequence.inputs``, the
   features), plus their differences to the previous and the next slice.
3. **The model**: a masked bidirectional GRU over the series, then a per-slice dense
   layer whose six outputs are *added* to the stage-1 logits, so stage 2 starts from
   stage 1's predictions and learns a correction. Padded steps are masked out of the
   GRU, the loss and the metric.
4. **Training** per fold on the same ``folds.csv``, through the same :func:`fit_fold`
   (resume, best checkpoint, early stopping, history) and the same outputs, in
   ``RUN/stage2/fold_k/``. Optional TTA runs the reversed series too.

Stage-1 logits are comparable across folds; features are not (each fold's model has its
own feature space), so ``inputs = ["logits"]`` is the safe default.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rsna import files
from rsna.config import Config
from rsna.errors import RsnaError
from rsna.labels import LABELS
from rsna.metadata import read_metadata, read_prepared_labels
from rsna.metrics import WeightedBCE, WeightedLogLoss
from rsna.models import load_model
from rsna.predict import (
    BEST_MODEL,
    PredictError,
    PredictResult,
    assemble,
    fold_models,
    predict_views,
    sample_images,
)
from rsna.submission import write_submission
from rsna.train import Evaluation, FoldResult, _read_folds, finish_fold, fit_fold

EMBED_OOF, EMBED_TEST = "embed_oof.npz", "embed_test.npz"


class SequenceError(RsnaError):
    """Stage 2 cannot run: missing stage-1 models or embeddings."""


def stage2_dir(config: Config) -> Path:
    return config.run_dir / "stage2"


# ------------------------------------------------------------------------- embeddings


def embed_fold(config: Config, fold: int, *, test_ids: list[str] | None = None) -> dict[str, Path]:
    """Write fold `fold`'s out-of-fold and test embeddings; reuse files already written."""
    fold_dir = config.fold_dir(fold)
    if not (fold_dir / BEST_MODEL).exists():
        raise SequenceError(f"{fold_dir}: no {BEST_MODEL}; train stage 1 of fold {fold} first")
    folds = _read_folds(config)
    jobs = {EMBED_OOF: folds.index[folds == fold].tolist()}
    if test_ids is not None:
        jobs[EMBED_TEST] = list(test_ids)
    todo = {name: ids for name, ids in jobs.items() if not (fold_dir / name).exists()}
    if todo:
        model = load_model(fold_dir / BEST_MODEL)
        embedder = keras.Model(
            model.input, [model.get_layer("features").output, model.get_layer("logits").output]
        )
        for name, ids in todo.items():
            _embed(embedder, ids, config, fold_dir / name)
        keras.backend.clear_session()
    return {name: fold_dir / name for name in jobs}


def _embed(embedder: keras.Model, ids: list[str], config: Config, path: Path) -> None:
    """Features and logits averaged over the TTA views of ``predict.tta``, as stage 1's
    OOF and test predictions are, so stage 2 starts from the same quality."""
    views, unreadable = predict_views(embedder, ids, config)
    features = np.mean([f for f, _ in views], axis=0)
    logits = np.mean([g for _, g in views], axis=0)
    readable = ~np.isin(ids, unreadable)
    with files.atomic_path(path) as tmp:
        np.savez(
            tmp,
            ids=np.array(ids, dtype=str),
            features=features.astype(np.float16),
            logits=logits.astype(np.float16),
            readable=readable,
        )


def read_embeddings(path: Path) -> pd.DataFrame:
    """An embeddings file as a DataFrame: ``logit_*``, ``feature_*`` and ``readable`` columns."""
    with np.load(path, allow_pickle=False) as data:
        ids = data["ids"]
        logits = pd.DataFrame(
            data["logits"].astype(np.float32), index=ids, columns=[f"logit_{c}" for c in LABELS]
        )
        features = pd.DataFrame(data["features"].astype(np.float32), index=ids).add_prefix(
            "feature_"
        )
        frame = pd.concat([logits, features], axis=1)
        frame["readable"] = data["readable"]
    frame.index.name = "image_id"
    return frame


# ---------------------------------------------------------------------------- series


def slice_inputs(
    embeddings: pd.DataFrame, *, inputs: tuple[str, ...], prior: np.ndarray
) -> pd.DataFrame:
    """Per-slice input columns; unreadable slices get the prior's logits and zero features."""
    columns = [c for c in embeddings.columns if any(c.startswith(f"{k[:-1]}_") for k in inputs)]
    frame = embeddings[columns].astype(np.float64)
    bad = ~embeddings["readable"].to_numpy(bool)
    if bad.any():
        logit_prior = np.log(np.clip(prior, 1e-4, 1 - 1e-4) / (1 - np.clip(prior, 1e-4, 1 - 1e-4)))
        frame.loc[bad, :] = 0.0
        if "logits" in inputs:
            frame.loc[bad, [f"logit_{c}" for c in LABELS]] = logit_prior
    return frame


def build_series(
    frame: pd.DataFrame, metadata: pd.DataFrame
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Series UID -> (image IDs in z order, (T, 3 * D) inputs: values, minus previous, minus next)."""
    order = metadata.loc[frame.index, ["series_uid", "slice_index"]].sort_values(
        ["series_uid", "slice_index"]
    )
    series = {}
    for uid, rows in order.groupby("series_uid", sort=True):
        ids = rows.index.tolist()
        values = frame.loc[ids].to_numpy(np.float32)
        previous = np.vstack([values[:1], values[:-1]])
        following = np.vstack([values[1:], values[-1:]])
        series[uid] = (ids, np.hstack([values, values - previous, values - following]))
    return series


class SeriesGenerator(keras.utils.PyDataset):
    """Batches of whole series, padded to the longest in the batch and masked.

    Returns ``({"slices": x, "mask": m}, y, m)`` for training (the mask doubles as the
    sample weight, so padded steps carry no loss) and ``{"slices": x, "mask": m}`` for
    prediction; x is (batch, steps, features), m is (batch, steps). Series are shuffled
    per epoch from ``(seed, epoch)``; `reverse` feeds every series back to front.
    """

    def __init__(
        self,
        series: dict,
        labels: pd.DataFrame | None = None,
        *,
        batch_size: int = 8,
        shuffle: bool = False,
        seed: int = 0,
        reverse: bool = False,
        jitter: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.series, self.uids = series, sorted(series)
        self.labels, self.batch_size, self.shuffle, self.seed, self.reverse = (
            labels,
            batch_size,
            shuffle,
            seed,
            reverse,
        )
        self.jitter = jitter
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.uids) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batch_uids(self, index: int, *, epoch: int) -> list[str]:
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(len(self.uids))
            if self.shuffle
            else np.arange(len(self.uids))
        )
        return [
            self.uids[k] for k in order[index * self.batch_size : (index + 1) * self.batch_size]
        ]

    def __getitem__(self, index: int):
        uids = self.batch_uids(index, epoch=self.epoch)
        steps = max(len(self.series[u][0]) for u in uids)
        width = self.series[uids[0]][1].shape[1]
        x = np.zeros((len(uids), steps, width), np.float32)
        mask = np.zeros((len(uids), steps), np.float32)
        y = np.zeros((len(uids), steps, len(LABELS)), np.float32)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.jitter else None
        for b, uid in enumerate(uids):
            ids, values = self.series[uid]
            if self.reverse:
                ids, values = ids[::-1], _reversed(values)
            if rng is not None:
                values = _distort(values, rng, self.jitter)
            x[b, : len(ids)] = values
            mask[b, : len(ids)] = 1.0
            if self.labels is not None:
                y[b, : len(ids)] = self.labels.loc[ids, list(LABELS)].to_numpy(np.float32)
        inputs = {"slices": x, "mask": mask}
        return (inputs, y, mask) if self.labels is not None else inputs

    def image_order(self) -> list[str]:
        """Image IDs in the order :meth:`predict_frame` reads the model's output."""
        return [i for uid in self.uids for i in self.series[uid][0]]


def _distort(values: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A random affine change of a series' inputs, per column: scale 1 +/- amount and a
    shift of +/- amount (the shift leaves the deltas alone).

    Each fold's slice model is calibrated a little differently; training on distorted
    inputs keeps the series model from learning the calibration of the training folds'
    models instead of the shape of bleeds along z.
    """
    d = values.shape[1] // 3
    scale = np.tile(rng.uniform(1 - amount, 1 + amount, d), 3).astype(np.float32)
    shift = np.concatenate([rng.uniform(-amount, amount, d), np.zeros(2 * d)]).astype(np.float32)
    return values * scale + shift


def _reversed(values: np.ndarray) -> np.ndarray:
    """A series back to front: the deltas to previous and next slices swap places."""
    d = values.shape[1] // 3
    flipped = values[::-1]
    return np.hstack([flipped[:, :d], flipped[:, 2 * d :], flipped[:, d : 2 * d]])


def predict_frame(model: keras.Model, gen: SeriesGenerator) -> pd.DataFrame:
    """Per-image probabilities, indexed by image ID (any order in, the right rows out)."""
    rows, ids = [], []
    for index in range(len(gen)):
        batch = gen[index]
        probs = model.predict_on_batch(batch)
        for b, uid in enumerate(gen.batch_uids(index, epoch=gen.epoch)):
            series_ids = gen.series[uid][0]
            n = len(series_ids)
            values = np.asarray(probs[b, :n])
            if gen.reverse:
                values = values[::-1]
            rows.append(values)
            ids.extend(series_ids)
    return pd.DataFrame(
        np.vstack(rows).astype(np.float64),
        index=pd.Index(ids, name="image_id"),
        columns=list(LABELS),
    )


# ----------------------------------------------------------------------------- model


def build_sequence_model(config: Config, width: int) -> keras.Model:
    """Masked BiGRU over (steps, width) slice inputs; six sigmoids per slice.

    When the inputs include stage-1 logits, the output logits are those plus a learned
    correction.
    """
    slices = keras.Input((None, width), name="slices")
    mask = keras.Input((None,), name="mask")
    boolean = keras.ops.cast(mask, "bool")
    x = keras.layers.Dense(config.sequence.units, activation="relu", name="project")(slices)
    x = keras.layers.Dropout(config.sequence.dropout)(x)
    x = keras.layers.Bidirectional(
        keras.layers.GRU(config.sequence.units, return_sequences=True), name="bigru"
    )(x, mask=boolean)
    x = keras.layers.Dropout(config.sequence.dropout)(x)
    correction = keras.layers.Dense(len(LABELS), kernel_initializer="zeros", name="correction")(x)
    if "logits" in config.sequence.inputs:
        # The first six inputs are the stage-1 logits; a frozen selection matrix passes them
        # through (a standard layer, so the model loads in safe mode; a Lambda would not).
        select = np.zeros((width, len(LABELS)), np.float32)
        select[np.arange(len(LABELS)), np.arange(len(LABELS))] = 1.0
        stage1 = keras.layers.Dense(
            len(LABELS),
            use_bias=False,
            trainable=False,
            kernel_initializer=keras.initializers.Constant(select),
            name="stage1_logits",
        )(slices)
        logits = keras.layers.Add(name="logits")([stage1, correction])
    else:
        logits = correction
    outputs = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model({"slices": slices, "mask": mask}, outputs, name="rsna_sequence")


# -------------------------------------------------------------------------- training


class SeriesEpochSync(keras.callbacks.Callback):
    """Give the series generator the epoch at its start (resumed runs continue the order)."""

    def __init__(self, generator: SeriesGenerator) -> None:
        super().__init__()
        self.generator = generator

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.generator.set_epoch(epoch)


def _fold_series(
    config: Config, folds: pd.Series, metadata: pd.DataFrame, prior: np.ndarray
) -> dict:
    """Series built from each fold's own out-of-fold embeddings."""
    series = {}
    for k in sorted(int(f) for f in folds.unique()):
        paths = embed_fold(config, k)
        frame = slice_inputs(
            read_embeddings(paths[EMBED_OOF]), inputs=config.sequence.inputs, prior=prior
        )
        series.update(build_series(frame, metadata))
    return series


def train_sequence_fold(
    config: Config, fold: int, *, callbacks=(), force: bool = False, verbose="auto", strategy=None
) -> FoldResult:
    """Train stage 2 on the series of every fold but `fold`; validate and predict OOF on it."""
    import shutil

    start = time.perf_counter()
    fold_dir = stage2_dir(config) / f"fold_{fold}"
    if force and fold_dir.exists():
        shutil.rmtree(fold_dir)
    if (fold_dir / "summary.json").exists():
        from rsna.train import _finished

        return _finished(fold_dir, fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    folds = _read_folds(config)
    metadata = read_metadata(config.data.work_dir)
    labels = read_prepared_labels(config.data.work_dir)
    train_ids = folds.index[folds != fold].tolist()
    prior = labels.loc[train_ids, list(LABELS)].mean().to_numpy()
    series = _fold_series(config, folds, metadata, prior)
    fold_of = {uid: int(folds[ids[0]]) for uid, (ids, _) in series.items()}
    train_series = {u: s for u, s in series.items() if fold_of[u] != fold}
    valid_series = {u: s for u, s in series.items() if fold_of[u] == fold}
    keras.utils.set_random_seed(config.train.seed + fold)
    seq = config.sequence
    train_gen = SeriesGenerator(
        train_series,
        labels,
        batch_size=seq.batch_size,
        shuffle=True,
        seed=config.train.seed,
        jitter=seq.jitter,
    )
    valid_gen = SeriesGenerator(valid_series, labels, batch_size=seq.batch_size)
    width = next(iter(series.values()))[1].shape[1]
    model = build_sequence_model(config, width)
    schedule = keras.optimizers.schedules.CosineDecay(
        seq.learning_rate, decay_steps=max(1, seq.epochs * len(train_gen)), alpha=0.05
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
        loss=WeightedBCE(config.train.label_weights),
        weighted_metrics=[WeightedLogLoss()],
    )
    best = fit_fold(
        model,
        train_gen,
        valid_gen,
        fold_dir=fold_dir,
        epochs=seq.epochs,
        patience=seq.patience,
        callbacks=[SeriesEpochSync(train_gen), *callbacks],
        verbose=verbose,
    )
    oof = predict_series(best, valid_series, config)
    return finish_fold(
        fold,
        fold_dir,
        oof,
        labels,
        train_ids=train_ids,
        title=f"{config.name} stage 2, fold {fold}",
        started=start,
        extra={"series_train": len(train_series), "series_valid": len(valid_series)},
    )


def predict_series(model: keras.Model, series: dict, config: Config) -> pd.DataFrame:
    """Probabilities per image, averaged over the forward and (optionally) reversed series."""
    views = [False, True] if config.sequence.tta_reverse else [False]
    frames = [
        predict_frame(
            model, SeriesGenerator(series, batch_size=config.sequence.batch_size, reverse=r)
        )
        for r in views
    ]
    first = frames[0]
    return pd.DataFrame(
        np.mean([f.loc[first.index].to_numpy() for f in frames], axis=0),
        index=first.index,
        columns=list(LABELS),
    )


def predict_sequence_test(config: Config, *, write: bool = True):
    """Stage-2 test predictions: each fold's series model on its own slice model's test
    embeddings, averaged over folds, through the same validated submission writer."""
    start = time.perf_counter()
    test = sample_images(config)
    per_fold, unreadable, used = [], set(), []
    for path in fold_models(config):
        fold = int(path.parent.name.split("_")[1])
        stage2 = stage2_dir(config) / f"fold_{fold}" / BEST_MODEL
        if not stage2.exists():
            raise SequenceError(f"{stage2}: missing; run `rsna train CONFIG --stage 2` first")
        embeddings = read_embeddings(embed_fold(config, fold, test_ids=test.present)[EMBED_TEST])
        unreadable |= set(embeddings.index[~embeddings["readable"].to_numpy(bool)])
        frame = slice_inputs(embeddings, inputs=config.sequence.inputs, prior=test.prior)
        probs = predict_series(load_model(stage2), build_series(frame, test.metadata), config)
        per_fold.append(probs.loc[test.present].to_numpy())
        used.append(f"fold_{fold}")
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
    submission = stage2_dir(config) / "submission.csv"
    if write:
        write_submission(predictions, test.sample_csv, submission, clip=config.predict.clip)
        report["submission"] = str(submission)
        files.write_json(stage2_dir(config) / "predict_report.json", report)
    return PredictResult(predictions, submission, report)


def compare_stages(config: Config, first: Evaluation) -> pd.DataFrame | None:
    """Stage 1 (`first`, from :func:`rsna.train.evaluate`) and stage 2 OOF log loss side
    by side, per label and weighted, plotted in ``RUN/stages.png``; None when no stage-2
    fold has OOF predictions yet."""
    from rsna.plots import plot_stage_comparison, save_figure
    from rsna.train import evaluate

    if not list(stage2_dir(config).glob("fold_*/oof.csv")):
        return None
    second = evaluate(stage2_dir(config), config.data.work_dir)
    both = first.scores[["model"]].rename(columns={"model": "stage 1"})
    both["stage 2"] = second.scores["model"]
    both["prior"] = first.scores["prior"]
    both["stage 2 / stage 1"] = both["stage 2"] / both["stage 1"]
    save_figure(plot_stage_comparison(both), config.run_dir / "stages.png")
    return both


def format_stages(both: pd.DataFrame) -> str:
    table = both.to_string(float_format=lambda v: f"{v:.4f}")
    return f"\nstage 1 and stage 2 side by side (out-of-fold log loss):\n{table}"


def embed_folds(config: Config, folds="all") -> list[dict[str, Path]]:
    """``rsna embed``: out-of-fold and (when there is a sample submission) test embeddings."""
    try:
        test_ids = sample_images(config).present
    except PredictError:
        test_ids = None
    chosen = sorted(int(k) for k in _read_folds(config).unique()) if folds == "all" else list(folds)
    return [embed_fold(config, k, test_ids=test_ids) for k in chosen]
