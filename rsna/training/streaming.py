"""Stream a store through tf.data: shards read whole, decoded in parallel, each slice once.

:func:`stream_dataset` is the store's fast path for ``model.fit``, ``tf.distribute`` and
TPUs:

* ``tf.io.read_file`` reads each shard whole, from any path ``tf.io.gfile`` knows (a
  local disk, ``gs://``); the records an epoch needs are framed at the index's offsets
  and checked (both checksums and the record's tag) in Python, so a corrupt or misplaced
  record names its shard and image;
* ``interleave`` keeps `cycle_length` shards open and decodes up to `parallel` of them at
  once, in threads: the codecs (zstd, OpenCV's JPEG) release the GIL, so throughput grows
  with the cores given;
* a shard holds whole series (:func:`rsna.data.cache.plan_shards`), so context channels
  are stacked from slices decoded once for the whole shard: each slice is decoded once an
  epoch, whatever the context;
* the shard order, the order within a shard, the shuffle buffer and the augmentation are
  pure functions of ``(seed, epoch)``, as in :class:`~rsna.training.generator.DataGenerator`,
  so a resumed run continues the same sequence (``start_epoch``).

The batches mix `cycle_length` shards (several series each) and a shuffle buffer; they
are not the generator's batches, which draw every sample from the whole training set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from rsna.data.augment import Augment
from rsna.data.augment import augment as augment_image
from rsna.data.cache import CacheError, ImageCache
from rsna.data.labels import LABELS
from rsna.data.records import RecordError, record_at
from rsna.data.series import neighbours
from rsna.errors import RsnaError

__all__ = ["StreamError", "open_store", "stream_dataset", "stream_steps"]


class StreamError(RsnaError):
    """Bad options, or images the store does not hold."""


def open_store(location: str | os.PathLike[str]) -> ImageCache:
    """A store on a local disk, or at a URL ``tf.io.gfile`` knows (``gs://bucket/store``):
    its cache.json and index.parquet are then read through ``tf.io.gfile``, and its shards
    by ``tf.io.read_file``."""
    text = str(location)
    if "://" not in text:
        return ImageCache(location)
    import tensorflow as tf

    def read_bytes(url: str) -> bytes:
        with tf.io.gfile.GFile(url, "rb") as fh:
            return fh.read()

    return ImageCache(text, read_bytes=read_bytes)


def stream_steps(n: int, batch_size: int) -> int:
    """Batches an epoch of `n` samples gives (the last one partial)."""
    return -(-n // batch_size)


def stream_dataset(
    cache: str | os.PathLike[str] | ImageCache,
    image_ids: Sequence[str],
    labels: pd.DataFrame,
    *,
    batch_size: int,
    context: int = 0,
    shuffle: bool = False,
    augment: Augment | None = None,
    seed: int = 0,
    epochs: int = 1,
    start_epoch: int = 0,
    cycle_length: int = 8,
    parallel: int | None = None,
    shuffle_buffer: int | None = None,
    static_shapes: bool = False,
):
    """A ``tf.data.Dataset`` of ``(x, y)`` batches of `image_ids` from a store, epoch after
    epoch: x uint8 (batch, size, size, channels), y float32 (batch, 6) in LABELS order.

    Unreadable images are left out. Fit it with ``steps_per_epoch=stream_steps(n,
    batch_size)``, n being the readable images.

    Args:
        cache: a store folder or URL (``gs://...``, see :func:`open_store`), or an open
            :class:`~rsna.data.cache.ImageCache`.
        image_ids: the training images.
        labels: the wide label table.
        batch_size: samples per batch.
        context: adjacent slices on each side, stacked as channels.
        shuffle: shuffle shards, samples within a shard, and a buffer of samples.
        augment: random warps, seeded by (seed, epoch, shard, row).
        seed: seeds every random choice.
        epochs, start_epoch: which epochs the dataset holds, one after the other.
        cycle_length: shards open at once (their decoded slices are in memory).
        parallel: shards decoded at once (default: tf.data's AUTOTUNE).
        shuffle_buffer: samples in the shuffle buffer (default 4 batches).
        static_shapes: every batch holds `batch_size` rows, as TPUs need: each epoch's
            short last batch is padded with zeros, and the dataset gives ``(x, y, w)``
            with sample weight w = 1 for real images and 0 for the padding, so the loss
            and the metric count each real image exactly once.

    Raises:
        StreamError: an image the store does not hold, or bad options.
    """
    import tensorflow as tf

    store = cache if isinstance(cache, ImageCache) else open_store(cache)
    plan = _plan(store, image_ids, labels, context=context)
    if batch_size < 1 or cycle_length < 1:
        raise StreamError(
            f"`batch_size` and `cycle_length` must be positive. Received: batch_size={batch_size}, cycle_length={cycle_length}"
        )
    shape = (store.spec.size, store.spec.size, store.spec.channels * (2 * context + 1))
    paths = tf.constant([str(store.shard_path(k)) for k in plan.shards])
    autotune = tf.data.AUTOTUNE

    def decode(k, e, records):
        return plan.decode(int(k), int(e), records, shuffle=shuffle, augment=augment, seed=seed)

    def shard(position, e):
        k = tf.gather(plan_ids, position)
        # the whole shard, read through tf.io (local disk or gs://); its records are
        # framed and checked in Python, so a corrupt one names its shard and image
        blob = tf.data.Dataset.from_tensors(tf.io.read_file(tf.gather(paths, position)))

        def samples(data):
            x, y = tf.numpy_function(decode, [k, e, data], (tf.uint8, tf.float32))
            return tf.ensure_shape(x, (None, *shape)), tf.ensure_shape(y, (None, len(LABELS)))

        return blob.map(samples).unbatch()

    plan_ids = tf.constant(plan.shards, tf.int64)
    buffer = shuffle_buffer if shuffle_buffer is not None else 4 * batch_size

    def epoch(e: int):
        order = np.arange(len(plan.shards))
        if shuffle:
            order = np.random.default_rng([seed, e, 1]).permutation(order)
        data = tf.data.Dataset.from_tensor_slices(order).interleave(
            lambda position: shard(position, tf.constant(e, tf.int64)),
            cycle_length=cycle_length,
            block_length=1,
            num_parallel_calls=parallel or autotune,
            deterministic=True,
        )
        if shuffle and buffer > 1:
            data = data.shuffle(
                buffer, seed=int(np.random.default_rng([seed, e, 2]).integers(2**31))
            )
        data = data.batch(batch_size)
        return data.map(padded) if static_shapes else data

    def padded(x, y):
        real = tf.shape(x)[0]
        missing = batch_size - real
        x = tf.pad(x, [[0, missing], [0, 0], [0, 0], [0, 0]])
        y = tf.pad(y, [[0, missing], [0, 0]])
        w = tf.concat([tf.ones([real]), tf.zeros([missing])], axis=0)
        return (
            tf.ensure_shape(x, (batch_size, *shape)),
            tf.ensure_shape(y, (batch_size, len(LABELS))),
            tf.ensure_shape(w, (batch_size,)),
        )

    data = epoch(start_epoch)
    for e in range(start_epoch + 1, start_epoch + epochs):
        data = data.concatenate(epoch(e))
    return data.prefetch(autotune)


class _Plan:
    """Which rows of which shards to decode, and the samples to make of them."""

    def __init__(
        self, store: ImageCache, wanted: pd.DataFrame, stacks: np.ndarray, targets: np.ndarray
    ) -> None:
        self.store, self.wanted = store, wanted
        self.shards = sorted(int(k) for k in wanted["shard"].unique())
        ordered = store.index.sort_values(["shard", "row"])
        self._records = {  # shard -> (image IDs, offsets, lengths) by row
            int(k): (part.index.to_numpy(), part["offset"].to_numpy(), part["length"].to_numpy())
            for k, part in ordered.groupby("shard")
            if int(k) in self.shards
        }
        self._by_shard = {k: np.flatnonzero(wanted["shard"].to_numpy() == k) for k in self.shards}
        self._stacks, self._targets = (
            stacks,
            targets,
        )  # per wanted sample: rows of its slices; labels
        self.images = len(wanted)

    def decode(
        self,
        k: int,
        e: int,
        records: bytes,
        *,
        shuffle: bool,
        augment: Augment | None,
        seed: int,
    ):
        """The samples of shard k in epoch e from its records: each needed slice decoded once."""
        samples = self._by_shard[k]
        if shuffle:
            samples = np.random.default_rng([seed, e, k]).permutation(samples)
        spec = self.store.spec
        slices = np.unique(self._stacks[samples])
        decoded = {}
        ids, offsets, lengths = self._records[k]
        path = self.store.shard_path(k)
        for row in slices:
            offset = int(offsets[row])
            try:
                data = record_at(records, offset, int(lengths[row]), path=path)
            except RecordError as exc:
                raise CacheError(f"{path}: image {ids[row]}: {exc}") from exc
            image = np.empty(spec.shape, np.uint8)
            self.store.decode_record(ids[row], data, image, path=path, offset=offset)
            decoded[int(row)] = image
        step = spec.channels
        width = self._stacks.shape[1]
        x = np.empty((len(samples), spec.size, spec.size, step * width), np.uint8)
        for i, sample in enumerate(samples):
            for j, row in enumerate(self._stacks[sample]):
                x[i, ..., j * step : (j + 1) * step] = decoded[int(row)]
            if augment is not None:
                rng = np.random.default_rng([seed, e, k, int(self.wanted["row"].iat[sample])])
                x[i] = augment_image(x[i], rng, augment)
        return x, self._targets[samples]


def _plan(
    store: ImageCache, image_ids: Sequence[str], labels: pd.DataFrame, *, context: int
) -> _Plan:
    ids = pd.Index([str(i) for i in image_ids])
    missing = ids.difference(store.index.index)
    if len(missing):
        raise StreamError(f"{len(missing)} images are not in {store.path}, e.g. {missing[0]!r}")
    unlabelled = ids.difference(labels.index)
    if len(unlabelled):
        raise StreamError(f"{len(unlabelled)} images have no labels, e.g. {unlabelled[0]!r}")
    index = store.index
    wanted = index.loc[ids][index.loc[ids, "ok"].to_numpy()]
    if wanted.empty:
        raise StreamError("no readable images to stream")
    around = neighbours(store.slices, wanted.index.tolist(), context=context)
    ok = index["ok"]
    stacks = np.empty(around.shape, np.int64)
    for j in range(around.shape[1]):  # an unreadable neighbour: the centre slice instead
        neighbour = pd.Index(around[:, j])
        usable = ok.loc[neighbour].to_numpy()
        chosen = np.where(usable, neighbour, wanted.index)
        stacks[:, j] = index.loc[chosen, "row"].to_numpy()
    targets = labels.loc[wanted.index, list(LABELS)].to_numpy(np.float32)
    return _Plan(store, wanted, stacks, targets)
