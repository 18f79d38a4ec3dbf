"""Stream a store through tf.data: blocks of adjacent slices read by offset, decoded in
parallel, memory bounded by the pipeline's depth, not by the shard.

:func:`stream_dataset` is the store's path for a store in a bucket (``gs://``) and for
TPUs, which read through tf.data:

* the samples of a shard are cut, in slice order, into blocks of `block` samples; a
  block's records lie side by side in its shard, so one read (``os.pread``-like, through
  ``tf.io.gfile`` for a URL) brings a block and its neighbours, framed and checked (both
  checksums and the record's tag) in Python, so a corrupt or misplaced record names its
  shard and image;
* a ``map`` decodes up to `parallel` blocks at once, in threads (zstd and OpenCV's JPEG
  release the GIL); the neighbours are found by index within the block, so a slice is
  decoded about ``1 + 2 * context / block`` times an epoch;
* the block order, the order within a block, the shuffle buffer and the augmentation are
  pure functions of ``(seed, epoch)``, as in :class:`~rsna.training.generator.DataGenerator`,
  so a resumed run continues the same sequence (``start_epoch``).

What it holds at once (:func:`stream_memory`): the blocks being decoded, the shuffle
buffer and the prefetched batches; nothing grows with the shard. The batches mix blocks
of many series and a shuffle buffer; they are not the generator's batches, which draw
every sample from the whole training set.
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
from rsna.data.records import FOOTER_BYTES, HEADER_BYTES, RecordError, record_at
from rsna.data.series import neighbours, stack_channels
from rsna.errors import RsnaError

__all__ = ["StreamError", "open_store", "stream_dataset", "stream_memory", "stream_steps"]


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


def stream_memory(
    sample_bytes: int,
    *,
    batch_size: int,
    block: int = 16,
    parallel: int = 4,
    shuffle_buffer: int | None = None,
    prefetch: int = 2,
) -> int:
    """The most bytes of samples :func:`stream_dataset` holds at once: `parallel` blocks
    being decoded plus one being unbatched, the shuffle buffer, the batch being filled and
    `prefetch` batches ready (the compressed reads and TensorFlow itself come on top)."""
    buffer = _shuffle_buffer(shuffle_buffer, batch_size)
    samples = (parallel + 1) * block + buffer + (prefetch + 1) * batch_size
    return samples * sample_bytes


def _shuffle_buffer(shuffle_buffer: int | None, batch_size: int) -> int:
    """Samples in the shuffle buffer: as given, else 4 batches."""
    return shuffle_buffer if shuffle_buffer is not None else 4 * batch_size


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
    block: int = 16,
    parallel: int | None = None,
    shuffle_buffer: int | None = None,
    prefetch: int = 2,
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
        shuffle: shuffle the blocks, the samples within a block, and a buffer of samples.
        augment: random warps, seeded by (seed, epoch, shard, row).
        seed: seeds every random choice.
        epochs, start_epoch: which epochs the dataset holds, one after the other.
        block: samples decoded together, adjacent in their series (one read each).
        parallel: blocks decoded at once (default: this process's cores).
        shuffle_buffer: samples in the shuffle buffer (default 4 batches).
        prefetch: batches made ahead.
        static_shapes: every batch holds `batch_size` rows, as TPUs need: each epoch's
            short last batch is padded with zeros, and the dataset gives ``(x, y, w)``
            with sample weight w = 1 for real images and 0 for the padding, so the loss
            and the metric count each real image exactly once.

    Raises:
        StreamError: an image the store does not hold, or bad options.
    """
    import tensorflow as tf

    parallel = parallel if parallel is not None else len(os.sched_getaffinity(0))
    for name, value in [("batch_size", batch_size), ("block", block), ("parallel", parallel)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StreamError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise StreamError(f"`prefetch` must be a non-negative integer. Received: prefetch={prefetch!r}")  # fmt: skip
    store = cache if isinstance(cache, ImageCache) else open_store(cache)
    plan = _plan(store, image_ids, labels, context=context, block=block)
    shape = (store.spec.size, store.spec.size, store.spec.channels * (2 * context + 1))
    buffer = _shuffle_buffer(shuffle_buffer, batch_size)

    def decode(b, e):
        return plan.decode(int(b), int(e), shuffle=shuffle, augment=augment, seed=seed)

    def samples(b, e):
        x, y = tf.numpy_function(decode, [b, e], (tf.uint8, tf.float32))
        return tf.ensure_shape(x, (None, *shape)), tf.ensure_shape(y, (None, len(LABELS)))

    def epoch(e: int):
        order = np.arange(len(plan.blocks))
        if shuffle:
            order = np.random.default_rng([seed, e, 1]).permutation(order)
        data = tf.data.Dataset.from_tensor_slices(order)
        data = data.map(
            lambda b: samples(b, tf.constant(e, tf.int64)),
            num_parallel_calls=parallel,
            deterministic=True,
        ).unbatch()
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
    return data.prefetch(prefetch) if prefetch else data


class _Plan:
    """The blocks of samples to decode, each from one read of its shard."""

    def __init__(
        self, store: ImageCache, wanted: pd.DataFrame, stacks: np.ndarray, targets: np.ndarray, *, block: int
    ) -> None:  # fmt: skip
        self.store, self.wanted = store, wanted
        self._stacks, self._targets = stacks, targets  # per wanted sample: its slices' rows; labels
        shards = wanted["shard"].to_numpy()
        rows = wanted["row"].to_numpy()
        present = sorted(set(shards.tolist()))
        ordered = store.index.sort_values(["shard", "row"])
        self._records = {  # shard -> (image IDs, offsets, lengths) by row
            int(k): (part.index.to_numpy(), part["offset"].to_numpy(), part["length"].to_numpy())
            for k, part in ordered.groupby("shard")
            if k in present
        }
        self.blocks: list[tuple[int, np.ndarray]] = []  # (shard, wanted samples in slice order)
        for k in present:
            mine = np.flatnonzero(shards == k)
            mine = mine[np.argsort(rows[mine], kind="stable")]
            self.blocks += [(int(k), mine[i : i + block]) for i in range(0, len(mine), block)]
        self.images = len(wanted)

    def decode(self, b: int, e: int, *, shuffle: bool, augment: Augment | None, seed: int):
        """The samples of block b in epoch e: its records read at once, each needed slice
        decoded once, the context stacked by :func:`~rsna.data.series.stack_channels`."""
        k, samples = self.blocks[b]
        if shuffle:
            samples = np.random.default_rng([seed, e, 3, b]).permutation(samples)
        spec = self.store.spec
        needed = np.unique(self._stacks[samples])
        ids, offsets, lengths = self._records[k]
        path = self.store.shard_path(k)
        start = int(offsets[needed[0]])
        end = int(offsets[needed[-1]]) + HEADER_BYTES + int(lengths[needed[-1]]) + FOOTER_BYTES
        span = _read_span(path, start, end - start)
        decoded = {}
        for row in needed:
            offset = int(offsets[row])
            try:
                data = record_at(span, offset - start, int(lengths[row]), path=path, offset=offset)
            except RecordError as exc:
                raise CacheError(f"{path}: image {ids[row]}: {exc}") from exc
            image = np.empty(spec.shape, np.uint8)
            self.store.decode_record(ids[row], data, image, path=path, offset=offset)
            decoded[int(row)] = image
        x = np.empty((len(samples), spec.size, spec.size, spec.channels * self._stacks.shape[1]), np.uint8)  # fmt: skip
        for i, sample in enumerate(samples):
            stack_channels([decoded[int(row)] for row in self._stacks[sample]], out=x[i])
            if augment is not None:
                rng = np.random.default_rng([seed, e, k, int(self.wanted["row"].iat[sample])])
                x[i] = augment_image(x[i], rng, augment, windows=spec.channels)
        return x, self._targets[samples]


def _read_span(path: str | os.PathLike[str], start: int, size: int) -> bytes:
    """`size` bytes of a shard file from byte `start`: a local file, or a URL through
    ``tf.io.gfile`` (a short read is caught by the record checks)."""
    text = str(path)
    if "://" in text:
        import tensorflow as tf

        with tf.io.gfile.GFile(text, "rb") as fh:
            fh.seek(start)
            return fh.read(size)
    try:
        with open(text, "rb") as fh:
            return os.pread(fh.fileno(), size, start)
    except OSError as exc:
        raise CacheError(f"{text}: cannot read ({exc.strerror or exc})") from exc


def _plan(
    store: ImageCache, image_ids: Sequence[str], labels: pd.DataFrame, *, context: int, block: int
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
    return _Plan(store, wanted, stacks, targets, block=block)
