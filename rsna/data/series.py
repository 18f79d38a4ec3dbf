"""Series: slices in z order, the seeded epoch order, and stage 2's per-series inputs.

Everything here is NumPy and pandas:

* :func:`slice_order`: each slice's place in its series, by z;
* :func:`neighbours`: the slices around each image by z, for context channels;
* :func:`epoch_order`: the order of an epoch as a pure function of ``(seed, epoch)``,
  shared by both Keras generators, so worker processes, resumed runs and tf.data all
  see the same batches;
* stage 2's inputs: :func:`read_embeddings` reads a stage-1 embeddings file,
  :func:`slice_inputs` picks the columns, :func:`build_series` stacks each series in z
  order with the deltas to its neighbours, and :func:`distort` and
  :func:`reversed_series` are its augmentation and test-time view.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from rsna.data.labels import LABELS
from rsna.errors import RsnaError

__all__ = [
    "GEOMETRY",
    "Series",
    "SeriesError",
    "build_series",
    "check_sampling",
    "distort",
    "epoch_order",
    "geometry",
    "neighbours",
    "slice_order",
    "stack_channels",
    "study_epoch_size",
    "study_sample",
    "embeddings_frame",
    "read_embeddings",
    "reversed_series",
    "slice_inputs",
]

#: Keeps the study sampler's random stream apart from the epoch's permutation.
_STUDY_STREAM = 0x5747

#: Series UID -> (image IDs in z order, (T, 3 * D [+ len(GEOMETRY)]) float32 inputs).
Series = dict[str, tuple[list[str], np.ndarray]]

#: Stage 2's per-slice geometry (``sequence.position``), appended after the inputs and
#: their deltas: where the slice lies in its series (0 at the lowest z, 1 at the highest),
#: and its z gaps to the previous and next slice over the series' median gap, from
#: ImagePositionPatient (0020,0032); a gap is 0 at the series' ends.
GEOMETRY = ("position", "gap_previous", "gap_next")

#: Gap ratios above this (a series with a hole many slices long) are clipped to it.
MAX_GAP_RATIO = 4.0


class SeriesError(RsnaError):
    """Bad options for series order or series inputs."""


_CV_CN_MAX = 512  # OpenCV's channel limit per array (CV_CN_MAX in core/cvdef.h)


def stack_channels(slices: Sequence[np.ndarray], *, out: np.ndarray) -> np.ndarray:
    """Write `slices` (each uint8 rows x cols x c) side by side along the channels of `out`
    (rows x cols x sum of c), as ``np.concatenate(slices, axis=2)`` would.

    A context sample's channels interleave its slices pixel by pixel, a copy NumPy makes
    a few bytes at a time; OpenCV's ``cv2.merge`` makes it about 5x faster (issue 28,
    ``scripts/bench_feed.py``). `out` must be C-contiguous, as a batch row is.

    Raises:
        SeriesError: the slices' shapes do not add up to `out`'s.
    """
    channels = sum(image.shape[2] for image in slices)
    if out.shape != (*slices[0].shape[:2], channels) or any(
        image.shape[:2] != out.shape[:2] for image in slices
    ):
        raise SeriesError(
            f"slices of shapes {[image.shape for image in slices]} do not stack "
            f"into {out.shape}"
        )
    if len(slices) == 1 or not out.flags.c_contiguous or channels > _CV_CN_MAX:
        np.concatenate(slices, axis=2, out=out)
        return out
    merged = cv2.merge(list(slices), dst=out)
    if merged is not out and not np.shares_memory(merged, out):  # OpenCV made its own array
        np.copyto(out, merged)
    return out


def neighbours(slices: pd.DataFrame, image_ids: Sequence[str], *, context: int) -> np.ndarray:
    """The IDs of slices ``s - context .. s + context`` around each image, by z.

    Args:
        slices: ``series_uid`` and ``slice_index`` per image ID (metadata or cache index).
        image_ids: the centre slices.
        context: slices on each side; 0 gives each image alone.

    Returns:
        An object array (len(image_ids), 2 * context + 1). At the ends of a series the
        edge slice repeats; an image without a series stands in for its own neighbours.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise SeriesError(
            f"`context` must be a non-negative integer. Received: context={context!r}"
        )
    ids = np.asarray(image_ids, dtype=object)
    if context == 0:
        return ids[:, None]
    by_position = {
        (s, i): image
        for image, s, i in zip(
            slices.index, slices["series_uid"], slices["slice_index"], strict=True
        )
    }
    length = slices.groupby("series_uid")["slice_index"].max() + 1
    series = slices.loc[ids, "series_uid"].to_numpy()
    centre = slices.loc[ids, "slice_index"].to_numpy()
    table = np.empty((len(ids), 2 * context + 1), dtype=object)
    for row, (image, s, i) in enumerate(zip(ids, series, centre, strict=True)):
        if s == "" or i < 0:
            table[row] = image
            continue
        last = length[s] - 1
        table[row] = [
            by_position[(s, min(max(i + d, 0), last))] for d in range(-context, context + 1)
        ]
    return table


def slice_order(frame: pd.DataFrame) -> pd.DataFrame:
    """``slice_index`` (0-based, by z within the series) and ``series_length`` per image.

    `frame` has ``series_uid``, ``z`` (ImagePositionPatient[2], (0020,0032)) and
    ``instance_number`` (0020,0013), indexed by image ID; InstanceNumber and then the
    image ID break ties of z. Images without a series UID get index -1 and length 0.
    """
    order = frame[["series_uid", "z", "instance_number"]].reset_index()
    id_column = order.columns[0]
    order = order.sort_values(["series_uid", "z", "instance_number", id_column], na_position="last")
    order["slice_index"] = order.groupby("series_uid", sort=False).cumcount()
    order["series_length"] = order.groupby("series_uid", sort=False)[id_column].transform("size")
    order.loc[order["series_uid"] == "", ["slice_index", "series_length"]] = [-1, 0]
    result = order.set_index(id_column)[["slice_index", "series_length"]].astype("int64")
    return result.loc[frame.index]


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Positions ``0 .. n - 1`` in the order of `epoch`: a permutation drawn from
    ``(seed, epoch)`` when shuffling, else the identity."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def study_sample(
    slices: pd.DataFrame,
    image_ids: Sequence[str],
    *,
    per_study: int,
    centre: float,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """Positions into `image_ids` of the slices one epoch draws: `per_study` a series
    (all of a shorter one), without replacement, each slice weighted by
    ``1 + centre * (1 - |2 p - 1|)`` where p in [0, 1] is its place in the series (the
    middle ``1 + centre`` times as likely as the ends). Sorted; drawn from
    ``(seed, epoch)``. An image without a series is always drawn.

    The 1st place drew 4 slices a study each epoch, "weighted towards the middle"; the
    weight's form here is ours. In RSNA a study holds one axial series, the unit here.
    Sampling without replacement by weight is the exponential-key method (Efraimidis and
    Spirakis 2006): each slice draws ``log(u) / w`` and a series keeps its largest keys.
    """
    check_sampling(per_study=per_study, centre=centre)
    ids = list(image_ids)
    series = slices.loc[ids, "series_uid"].to_numpy(object)
    index = slices.loc[ids, "slice_index"].to_numpy(np.float64)
    lone = (series == "") | (index < 0)
    series = np.where(lone, np.asarray(ids, object), series)
    code = pd.factorize(pd.Series(series, dtype=object))[0]
    last = pd.Series(index).groupby(code).transform("max").to_numpy()
    place = np.where(last > 0, index / np.where(last > 0, last, 1.0), 0.5)
    weight = 1.0 + centre * (1.0 - np.abs(2.0 * place - 1.0))
    u = np.random.default_rng([seed, epoch, _STUDY_STREAM]).random(len(ids))
    key = np.log(np.maximum(u, np.finfo(np.float64).tiny)) / weight
    order = np.lexsort((-key, code))
    rank = np.arange(len(ids)) - np.searchsorted(code[order], code[order], side="left")
    return np.sort(order[rank < per_study])


def check_sampling(*, per_study: int, centre: float) -> None:
    """Raise :class:`SeriesError` unless :func:`study_sample` can take these options."""
    if isinstance(per_study, bool) or not isinstance(per_study, int) or per_study < 1:
        raise SeriesError(
            f"`per_study` must be a positive integer. Received: per_study={per_study!r}"
        )
    if not 0.0 <= centre < math.inf:
        raise SeriesError(f"`centre` must be >= 0 and finite. Received: centre={centre!r}")


def study_epoch_size(slices: pd.DataFrame, image_ids: Sequence[str], *, per_study: int) -> int:
    """How many slices :func:`study_sample` draws an epoch: the same every epoch."""
    ids = list(image_ids)
    series = slices.loc[ids, "series_uid"].to_numpy(object)
    lone = (series == "") | (slices.loc[ids, "slice_index"].to_numpy() < 0)
    sizes = pd.Series(np.where(lone, np.asarray(ids, object), series)).value_counts()
    return int(np.minimum(sizes.to_numpy(), per_study).sum())


# --------------------------------------------------------------------- stage 2 inputs


def read_embeddings(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A stage-1 embeddings file as a DataFrame: ``logit_*``, ``feature_*`` and ``readable``.

    The file (``embed_oof.npz`` or ``embed_test.npz``) holds ``ids``, float16
    ``features`` and ``logits``, and ``readable``; it is read without pickle.
    """
    with np.load(Path(path), allow_pickle=False) as data:
        return embeddings_frame(
            data["ids"], logits=data["logits"], features=data["features"], readable=data["readable"]
        )


def embeddings_frame(
    ids: Sequence[str], *, logits: np.ndarray, features: np.ndarray, readable: np.ndarray
) -> pd.DataFrame:
    """Stage-1 embeddings as :func:`read_embeddings` gives them: ``logit_*``, ``feature_*``
    (both rounded to float16, as the files store them) and ``readable``, by image ID."""
    index = pd.Index(np.asarray(ids, dtype=str), name="image_id")
    frame = pd.concat(
        [
            pd.DataFrame(
                np.asarray(logits, np.float16).astype(np.float32),
                index=index,
                columns=[f"logit_{c}" for c in LABELS],
            ),
            pd.DataFrame(
                np.asarray(features, np.float16).astype(np.float32), index=index
            ).add_prefix("feature_"),
        ],
        axis=1,
    )
    frame["readable"] = np.asarray(readable, bool)
    return frame


def slice_inputs(
    embeddings: pd.DataFrame, *, inputs: tuple[str, ...], prior_logits: np.ndarray
) -> pd.DataFrame:
    """Per-slice input columns; unreadable slices get `prior_logits` and zero features."""
    columns = [c for c in embeddings.columns if any(c.startswith(f"{k[:-1]}_") for k in inputs)]
    frame = embeddings[columns].astype(np.float64)
    bad = ~embeddings["readable"].to_numpy(bool)
    if bad.any():
        frame.loc[bad, :] = 0.0
        if "logits" in inputs:
            frame.loc[bad, [f"logit_{c}" for c in LABELS]] = prior_logits
    return frame


def geometry(z: np.ndarray) -> np.ndarray:
    """The :data:`GEOMETRY` columns, (T, 3), of one series' slice positions `z` (mm,
    in slice order). A missing z counts as no gap."""
    z = np.asarray(z, np.float64)
    t = len(z)
    position = np.arange(t) / max(t - 1, 1)
    gaps = np.nan_to_num(np.abs(np.diff(z)), nan=0.0)
    typical = float(np.median(gaps)) if t > 1 else 0.0
    ratio = np.clip(gaps / typical, 0.0, MAX_GAP_RATIO) if typical > 0 else np.zeros(t - 1)
    previous = np.concatenate([[0.0], ratio])
    following = np.concatenate([ratio, [0.0]])
    return np.stack([position, previous, following], axis=1).astype(np.float32)


def build_series(frame: pd.DataFrame, metadata: pd.DataFrame, *, position: bool = False) -> Series:
    """Series UID -> (image IDs in z order, inputs): (T, 3 * D) values, minus previous,
    minus next; with `position`, the :data:`GEOMETRY` columns after them."""
    order = metadata.loc[frame.index, ["series_uid", "slice_index", "z"]].sort_values(
        ["series_uid", "slice_index"]
    )
    series = {}
    for uid, rows in order.groupby("series_uid", sort=True):
        ids = rows.index.tolist()
        values = frame.loc[ids].to_numpy(np.float32)
        previous = np.vstack([values[:1], values[:-1]])
        following = np.vstack([values[1:], values[-1:]])
        parts = [values, values - previous, values - following]
        if position:
            parts.append(geometry(rows["z"].to_numpy()))
        series[uid] = (ids, np.hstack(parts))
    return series


def _split(values: np.ndarray, position: bool) -> tuple[int, np.ndarray, np.ndarray]:
    """D, the 3 * D input-and-delta columns, and the :data:`GEOMETRY` columns (if any)."""
    cut = values.shape[1] - (len(GEOMETRY) if position else 0)
    return cut // 3, values[:, :cut], values[:, cut:]


def distort(
    values: np.ndarray, rng: np.random.Generator, amount: float, *, position: bool = False
) -> np.ndarray:
    """A random affine change of a series' inputs, per column: scale 1 +/- amount and a
    shift of +/- amount (the shift leaves the deltas alone). With `position`, the
    :data:`GEOMETRY` columns, which no slice model calibrates, are left as they are.

    Each fold's slice model is calibrated a little differently; training on distorted
    inputs keeps the series model from learning the calibration of the training folds'
    models instead of the shape of bleeds along z.
    """
    d, body, tail = _split(values, position)
    scale = np.tile(rng.uniform(1 - amount, 1 + amount, d), 3).astype(np.float32)
    shift = np.concatenate([rng.uniform(-amount, amount, d), np.zeros(2 * d)]).astype(np.float32)
    return np.hstack([body * scale + shift, tail])


def reversed_series(values: np.ndarray, *, position: bool = False) -> np.ndarray:
    """A series back to front: the deltas to previous and next slices swap places, and
    with `position` so do the :data:`GEOMETRY` gaps; a slice keeps its position."""
    d, body, tail = _split(values[::-1], position)
    parts = [body[:, :d], body[:, 2 * d :], body[:, d : 2 * d]]
    if position:
        parts.append(tail[:, [0, 2, 1]])
    return np.hstack(parts)
