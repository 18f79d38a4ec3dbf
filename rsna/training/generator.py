"""The Keras generators: ``DataGenerator`` (slices, stage 1) and ``SeriesGenerator``
(whole series, stage 2), and the ``EpochSync`` callback that serves both.

A :class:`keras.utils.PyDataset` keyed by image IDs. Every batch is a pure function of
``(seed, epoch, batch index)``: the order of an epoch, and the augmentation of each
sample, are drawn from generators seeded by those numbers. So:

* worker processes, re-forked by Keras every epoch, never repeat each other's draws;
* the same seed gives the same sequence of epochs;
* a run resumed at epoch k (``BackupAndRestore``) sees exactly the batches it would have;
* the tf.data pipeline of :func:`as_tf_dataset` gives the same samples.

Keras reshuffles batch order with Python's global ``random`` when ``fit(shuffle=True)``
(the default): pass ``shuffle=False`` to ``fit`` and let the generator shuffle.

Contract of :class:`DataGenerator`:

* ``len(gen) == ceil(n / batch_size)``; the last batch holds exactly the remainder.
* ``to_fit=True`` gives ``(x, y)``, y float32 (batch, 6) in :data:`rsna.data.labels.LABELS`
  order; ``to_fit=False`` gives x alone, in the order of ``image_ids``.
* x is uint8 (batch, size, size, channels) by default, and the model rescales it: that
  moves 4x fewer bytes than float32. ``dtype="float32"`` gives x / 255 instead.
* channels: for ``context=c`` the slices s-c .. s+c by z (edge slices repeat at the ends
  of a series), each with all windows: ``[s-1 windows..., s windows..., s+1 windows...]``.
* Training skips images known to be unreadable when it is built (a :class:`DataWarning`
  and ``gen.skipped``). A read that fails later drops that row from its batch (a warning,
  and ``gen.failed``). Prediction keeps every row: unreadable images give zeros and are
  listed in ``gen.unreadable``. Both lists hold each image once, in the order of
  ``image_ids``, and gather what forked worker processes found too: a read's outcome is
  a flag in memory shared with them. A missing neighbour slice is replaced
  by the centre slice.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import threading
import uuid
import warnings
import weakref
from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd

from rsna.config import Config
from rsna.data.augment import Augment, augment
from rsna.data.cache import ImageCache, complete_store
from rsna.data.crop import Crop
from rsna.data.labels import LABELS
from rsna.data.series import (
    Series,
    check_sampling,
    distort,
    epoch_order,
    neighbours,
    reversed_series,
    stack_channels,
    study_epoch_size,
    study_sample,
)
from rsna.data.sources import DicomFolder, DicomImages, ImageSource, ImageSpec
from rsna.data.views import View, apply_view, expand_views
from rsna.data.windowing import DEFAULT_WINDOWS, Curve, Window
from rsna.errors import DataWarning, RsnaError

__all__ = [
    "DataGenerator",
    "EpochSync",
    "SEED_SPELLING",
    "GeneratorError",
    "PaddedBatches",
    "SeriesGenerator",
    "as_tf_dataset",
    "trim",
]


class GeneratorError(RsnaError):
    """Bad options or inputs for the data generator."""


class DataGenerator(keras.utils.PyDataset):
    """Batches of windowed slices from a store, a prepared work folder, or a folder of DICOMs.

    Args:
        image_ids: the images, in the order of prediction.
        labels: the wide label table (needed when `to_fit`), or None.
        cache: a store folder (or :class:`~rsna.data.cache.ImageCache`) made by
            ``rsna preprocess``. It must hold `size` and `windows`. The fastest source.
        work_dir: a prepared work folder: read its DICOM files (and metadata).
        image_dir: a plain folder of ``<image ID>.dcm`` files, nothing prepared. With
            ``context > 0`` the headers of every file in it are read once (series and
            z), with a progress bar; nothing is written.
        source: any :class:`~rsna.data.sources.ImageSource` (e.g.
            :class:`~rsna.data.sources.DicomFiles`); its spec must be the one asked for.
        size: image size.
        windows: the windows, one channel each (per context slice).
        curve, crop: the window curve and head crop (:class:`rsna.data.sources.ImageSpec`).
        batch_size: samples per batch.
        context: adjacent slices on each side, stacked as channels.
        shuffle: a new order every epoch.
        augment: an :class:`~rsna.data.augment.Augment` (or True for the defaults), or None.
        seed: seeds the order and the augmentation.
        to_fit: return ``(x, y)`` (True) or x alone (False).
        dtype: ``"uint8"`` or ``"float32"`` (x / 255).
        hflip: flip every image left-right (test-time augmentation); the same as
            ``view="hflip"``.
        sampling: ``(per_study, centre)``: each epoch draws that many slices a series,
            weighted towards the middle by `centre` (:func:`rsna.data.series.study_sample`),
            seeded by ``(seed, epoch)``; None (the default) takes every image every epoch.
        view: a test-time view (:mod:`rsna.data.views`: a :class:`~rsna.data.views.View`
            or its name) applied to every batch; random crops are seeded by `seed`.
        **kwargs: passed to :class:`keras.utils.PyDataset`: ``workers``,
            ``use_multiprocessing``, ``max_queue_size``. The popular Keras kernels'
            spelling is accepted too (:data:`SEED_SPELLING`): ``list_IDs`` for
            `image_ids`, ``img_dir`` for `image_dir`, and ``img_size`` (an int or a square
            ``(rows, cols)``) for `size`.
    """

    def __init__(
        self,
        image_ids: Sequence[str] | None = None,
        labels: pd.DataFrame | None = None,
        *,
        cache: str | os.PathLike[str] | ImageCache | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        source: ImageSource | None = None,
        size: int = 256,
        windows: Sequence[Window] = DEFAULT_WINDOWS,
        curve: Curve = "linear",
        crop: Crop = "none",
        batch_size: int = 32,
        context: int = 0,
        shuffle: bool = False,
        augment: Augment | bool | None = None,
        seed: int = 0,
        to_fit: bool = True,
        dtype: str = "uint8",
        hflip: bool = False,
        view: View | str | None = None,
        sampling: tuple[int, float] | None = None,
        **kwargs,
    ) -> None:
        image_ids, size, image_dir = _seed_spelling(kwargs, image_ids=image_ids, size=size, image_dir=image_dir)  # fmt: skip
        super().__init__(**kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GeneratorError(
                f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
            )
        if dtype not in ("uint8", "float32"):
            raise GeneratorError(f"`dtype` must be 'uint8' or 'float32'. Received: dtype={dtype!r}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise GeneratorError(
                f"`context` must be a non-negative integer. Received: context={context!r}"
            )
        self.spec = ImageSpec(size=size, windows=tuple(windows), curve=curve, crop=crop)
        self.images = _source(
            cache=cache,
            work_dir=work_dir,
            image_dir=image_dir,
            source=source,
            spec=self.spec,
            context=context,
        )
        self.batch_size, self.context, self.shuffle, self.seed = batch_size, context, shuffle, seed
        self.to_fit, self.dtype, self.hflip = to_fit, dtype, hflip
        self.view = _the_view(view, hflip=hflip)
        self.augment = Augment() if augment is True else (augment or None)
        self.epoch = 0
        self.skipped: list[str] = []
        self._decoded: dict[int, int] = {}  # slices read, by thread: see `decodes`
        ids = _checked_ids(image_ids, self.images)
        if to_fit:
            ids = self._drop_unreadable(ids)
            self._targets = _targets(ids, labels)
        self.image_ids = ids
        self.sampling = sampling
        self._cached_order: tuple[int, np.ndarray] | None = None
        if sampling is not None:
            check_sampling(per_study=sampling[0], centre=sampling[1])
            self._epoch_size = study_epoch_size(self.images.slices, ids, per_study=sampling[0])
        else:
            self._epoch_size = len(ids)
        # per image: 0 read, FAILED, ZEROS; shared with forked workers (an anonymous mapping)
        self._outcome = np.frombuffer(mmap.mmap(-1, max(len(ids), 1)), np.uint8)[: len(ids)]
        # per batch: asked for since Keras began the epoch (shared the same way)
        self._asked = np.frombuffer(mmap.mmap(-1, max(len(self), 1)), np.uint8)[: len(self)]
        self._in_epoch = False
        for row, image_id in enumerate(ids):
            if not self.images.readable(image_id):
                self._outcome[row] = _ZEROS
        if not to_fit and self._outcome.any():
            first = self.unreadable[0]
            warnings.warn(
                f"predicting {len(self.unreadable)} unreadable images from zeros (listed in "
                f"gen.unreadable; a submission gives them the prior), e.g. {first}: "
                f"{self.images.reason(first)}",
                DataWarning,
                stacklevel=2,
            )
        self._slices = neighbours(self.images.slices, ids, context=context)
        self._owner = os.getpid()
        self._local = threading.local()  # each thread's scratch buffers and last batch
        self._ring = _Ring.for_workers(self, self.sample_shape) if dtype == "uint8" else None

    @classmethod
    def from_config(
        cls,
        config: Config,
        image_ids: Sequence[str],
        labels: pd.DataFrame | None = None,
        **options,
    ) -> DataGenerator:
        """A generator of `config`'s images: its store with ``data.cache = true`` (which
        must be complete: :class:`~rsna.data.cache.StoreMissing` otherwise), the DICOMs
        with ``data.cache = false``, or the ``source`` in `options`; its size, windows
        and context. `options` go to the constructor (batch_size, shuffle, augment,
        to_fit, ...)."""
        if "source" in options:
            source = {"source": options.pop("source")}
        elif config.data.cache:
            store = complete_store(config.data.work_dir, config.image.spec, config.codec)
            source = {"cache": store}
        else:
            source = {"work_dir": config.data.work_dir}
        return cls(
            image_ids,
            labels,
            **source,
            size=config.image.size,
            windows=config.image.windows,
            curve=config.image.curve,
            crop=config.image.crop,
            context=config.image.context,
            **options,
        )

    # ------------------------------------------------------------------ the contract

    def __len__(self) -> int:
        return math.ceil(self._epoch_size / self.batch_size)

    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def decodes(self) -> int:
        """Slices read from the source in this process, all threads together."""
        return sum(self._decoded.values())

    def _count_decode(self) -> None:
        thread = threading.get_ident()
        self._decoded[thread] = self._decoded.get(thread, 0) + 1

    @property
    def use_multiprocessing(self) -> bool:
        """Worker processes for DICOM sources; threads for a store even when processes are
        asked for. A store's decoders (zstd, OpenCV) release the GIL, so threads scale on
        their own, while processes would add a fork each epoch and shared-memory page
        faults: measured slower than one worker (``scripts/bench_scale.py``). The batches
        are the same either way."""
        return bool(self._use_multiprocessing) and not isinstance(self.images, ImageCache)

    @property
    def channels(self) -> int:
        return self.spec.channels * (2 * self.context + 1)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One sample's shape: (size, size, channels)."""
        return (self.spec.size, self.spec.size, self.channels)

    def __getitem__(self, index: int):
        batch = self.load_batch(index, epoch=self.epoch)
        self._asked[index] = 1
        return batch

    def on_epoch_begin(self) -> None:
        """Keras begins an epoch: count the batches it asks for until it ends it."""
        self._asked[:] = 0
        self._in_epoch = True

    def on_epoch_end(self) -> None:
        """Advance to the next epoch: a new order, new augmentation draws.

        Raises:
            GeneratorError: Keras ended an epoch it had begun before asking for every
                batch (``steps_per_epoch`` below ``len(gen)``): it would go on with the
                same iterator into the next epoch's order and then run out of data.
        """
        asked, began, self._in_epoch = int(self._asked.sum()), self._in_epoch, False
        if began and 0 < asked < len(self):
            raise GeneratorError(
                f"Keras ended an epoch after {asked} of this generator's {len(self)} "
                "batches: `steps_per_epoch` (or `validation_steps`) must be len(generator) "
                "or left out. For shorter epochs, build the generator on fewer image IDs"
            )
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        """Jump to `epoch` (a resumed run), see :class:`EpochSync`."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """Positions into ``image_ids`` in the order of `epoch` (with `sampling`, of the
        slices that epoch draws)."""
        cached = self._cached_order
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rows = np.arange(len(self.image_ids))
        if self.sampling is not None:
            per_study, centre = self.sampling
            rows = study_sample(
                self.images.slices,
                self.image_ids,
                per_study=per_study,
                centre=centre,
                seed=self.seed,
                epoch=epoch,
            )
        order = rows[epoch_order(len(rows), seed=self.seed, epoch=epoch, shuffle=self.shuffle)]
        self._cached_order = (epoch, order)  # one tuple: a thread sees the old or the new
        return order

    def load_batch(self, index: int, *, epoch: int):
        """Batch `index` of `epoch`; pure, so any process or thread gives the same batch.

        Each slice the batch needs is read once, even when it is the context of several
        of its samples, and a slice read for the previous batch in this process is not
        read again: predicting in series order reads every slice about once.
        """
        self._check_index(index)
        self._setup_worker()
        rows = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.augment else None
        x = self._batch_array(index, len(rows))  # each image is written straight into it
        kept = self._assemble(x, rows, rng)
        if not kept.all():
            slot = getattr(x, "ring_slot", None)
            x, rows = np.asarray(x[kept]), rows[kept]  # a copy; the slot is free again
            if slot is not None:
                self._ring.leases[slot] = 0
        x = self._finish(x)
        return (x, self._targets[rows]) if self.to_fit else x

    def load_part(self, index: int, *, part: int, parts: int, epoch: int):
        """Part `part` of `parts` equal parts of batch `index` of `epoch`, as ``(x, y, w)``
        of exactly ``batch_size // parts`` rows: one replica's share of a global batch.

        The parts of a batch hold its images once each, in order. Rows past the end of
        the last batch, and images that fail to read, are zeros with weight 0, so every
        part has the same shape (TPUs, several workers) and the loss and the metric count
        each real image exactly once. With augmentation, each part draws from
        ``(seed, epoch, index, part)``: other draws than :meth:`load_batch`'s.

        Raises:
            GeneratorError: `parts` does not divide the batch size, or `part` is outside it.
        """
        self._check_index(index)
        if not self.to_fit:
            raise GeneratorError("`load_part` needs a training generator (to_fit=True)")
        if parts < 1 or self.batch_size % parts or not 0 <= part < parts:
            raise GeneratorError(
                f"`parts` must divide batch_size={self.batch_size} and `part` must be in "
                f"[0, parts). Received: part={part}, parts={parts}"
            )
        share = self.batch_size // parts
        start = index * self.batch_size + part * share
        rows = self.order(epoch)[start : min(start + share, (index + 1) * self.batch_size)]
        rng = np.random.default_rng([self.seed, epoch, index, part]) if self.augment else None
        x = np.zeros((share, *self.sample_shape), np.uint8)
        y = np.zeros((share, len(LABELS)), np.float32)
        w = np.zeros(share, np.float32)
        w[: len(rows)] = self._assemble(x, rows, rng)
        y[: len(rows)] = self._targets[rows]
        return self._finish(x), y, w

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")

    def _assemble(self, x: np.ndarray, rows: np.ndarray, rng) -> np.ndarray:
        """Write the images of `rows` into ``x[:len(rows)]``, augmented when `rng` is
        given; which rows were read (a failed one is left as it was)."""
        decoded = self._read_slices(rows) if self.context else None
        kept = np.ones(len(rows), bool)
        for k, row in enumerate(rows):
            kept[k] = self._fill(x[k], int(row), decoded)
            if rng is not None and kept[k]:
                x[k] = augment(x[k], rng, self.augment, windows=self.spec.channels)
        return kept

    def _finish(self, x: np.ndarray) -> np.ndarray:
        """The test-time view and the output dtype."""
        if self.view.name != "none":
            x[...] = apply_view(x, self.view, seed=self.seed).copy()
        if self.dtype == "float32":
            x = x.astype(np.float32) / np.float32(255.0)
        return x

    # ------------------------------------------------------------------ internals

    def _batch_array(self, index: int, n: int) -> np.ndarray:
        """Where the batch is assembled: a free ring slot in a worker process, else fresh."""
        if self._ring is not None and os.getpid() != self._ring.owner:
            slot = self._ring.slot(index, n)
            if slot is not None:
                return slot
        return np.empty((n, *self.sample_shape), np.uint8)

    def _read_slices(self, rows: np.ndarray) -> dict[str, np.ndarray | RsnaError]:
        """Every slice the batch's context stacks need, read once: image ID -> image (or
        why not). Slices go into one of two scratch buffers, reused batch after batch
        (no fresh half-megabyte arrays), and a slice the previous batch read is copied
        from the other buffer instead of read again."""
        needed: dict[str, None] = {}
        for row in rows:
            centre = self.image_ids[int(row)]
            for image_id in self._slices[int(row)]:
                image_id = self._stand_in(image_id, centre)
                if self.images.readable(image_id):
                    needed[image_id] = None
        buffer = self._scratch(len(needed))
        recent = self._local.recent
        decoded: dict[str, np.ndarray | RsnaError] = {}
        for j, image_id in enumerate(needed):
            target, previous = buffer[j], recent.get(image_id)
            if previous is not None:
                np.copyto(target, previous)
            else:
                try:
                    self.images.read_into(image_id, target)
                    self._count_decode()
                except RsnaError as exc:
                    decoded[image_id] = exc
                    continue
            decoded[image_id] = target
        self._local.recent = {k: v for k, v in decoded.items() if isinstance(v, np.ndarray)}
        return decoded

    def _scratch(self, n: int) -> np.ndarray:
        """This thread's scratch buffer for `n` slices; the other one holds its last batch's."""
        local = self._local
        if getattr(local, "buffers", None) is None or len(local.buffers[0]) < n:
            size = max(n, self.batch_size * (2 * self.context + 1))
            local.buffers = [np.empty((size, *self.images.shape), np.uint8) for _ in range(2)]
            local.recent, local.flip = {}, 0
        local.flip ^= 1
        return local.buffers[local.flip]

    def _stand_in(self, image_id: str, centre: str) -> str:
        """An unreadable neighbour is replaced by the centre slice."""
        return centre if image_id != centre and not self.images.readable(image_id) else image_id

    def _fill(self, out: np.ndarray, row: int, decoded: dict | None) -> bool:
        """Write the stacked context channels of one image into `out`; False to skip it.

        Without context (`decoded` is None) the slice is decoded straight into `out`; with
        context, the decoded slices are interleaved into it in one pass
        (:func:`~rsna.data.series.stack_channels`)."""
        centre = self.image_ids[row]
        try:
            if decoded is None:
                if self._known_unreadable(centre):
                    out[...] = 0
                else:
                    self.images.read_into(centre, out)
                    self._count_decode()
            else:
                parts = [self._context_slice(i, centre, decoded) for i in self._slices[row]]
                stack_channels(parts, out=out)
        except RsnaError as exc:
            if self.to_fit:
                warnings.warn(f"skipping {centre} in training: {exc}", DataWarning, stacklevel=2)
                self._outcome[row] = _FAILED
                return False
            warnings.warn(f"predicting {centre} from zeros: {exc}", DataWarning, stacklevel=2)
            self._outcome[row] = _ZEROS
            out[...] = 0
        return True

    def _known_unreadable(self, image_id: str) -> bool:
        """A centre known to be unreadable: an error in training, zeros in prediction."""
        if self.images.readable(image_id):
            return False
        if self.to_fit:
            raise GeneratorError(f"{image_id} is unreadable: {self.images.reason(image_id)}")
        return True

    def _context_slice(self, image_id: str, centre: str, decoded: dict) -> np.ndarray:
        """One context slice from the batch's decoded slices (zeros for an unreadable
        centre in prediction)."""
        image_id = self._stand_in(image_id, centre)
        if self._known_unreadable(image_id):
            return np.zeros(self.images.shape, np.uint8)
        image = decoded[image_id]
        if isinstance(image, RsnaError):
            raise image
        return image

    @property
    def failed(self) -> list[str]:
        """Training images whose read failed after the generator was built (dropped from
        their batches), each once, from this process and its forked workers."""
        return [self.image_ids[row] for row in np.flatnonzero(self._outcome == _FAILED)]

    @property
    def unreadable(self) -> list[str]:
        """Images given zeros: unreadable when built, or whose read failed in prediction;
        each once, from this process and its forked workers."""
        return [self.image_ids[row] for row in np.flatnonzero(self._outcome == _ZEROS)]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ring"] = None  # shared memory and thread-locals belong to their process
        state["_local"] = None
        state["_outcome"] = np.array(self._outcome)  # a copy: a spawned process's own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _drop_unreadable(self, ids: list[str]) -> list[str]:
        bad = [i for i in ids if not self.images.readable(i)]
        if bad:
            warnings.warn(
                f"training skips {len(bad)} unreadable images, e.g. {bad[0]}: {self.images.reason(bad[0])}",
                DataWarning,
                stacklevel=3,
            )
            self.skipped = bad
            dropped = set(bad)
            ids = [i for i in ids if i not in dropped]
        if not ids:
            raise GeneratorError("no readable images to train on")
        return ids

    def _setup_worker(self) -> None:
        """In a forked worker process, run OpenCV without its thread pool.

        OpenCV's pool can deadlock after a fork; ``setNumThreads(0)`` is safe there,
        ``setNumThreads(1)`` is not (it waits for pool threads the child does not have).
        """
        if os.getpid() != self._owner:
            import cv2

            cv2.setNumThreads(0)
            self._owner = os.getpid()


#: A read's outcome, per image (DataGenerator._outcome): its read failed in training (the
#: row was dropped), or it was predicted from zeros.
_FAILED, _ZEROS = 1, 2

#: The seeds' keyword -> rsna's (the popular Keras kernels' ``DataGenerator(list_IDs,
#: labels, batch_size=32, img_size=(512, 512), img_dir=...)``).
SEED_SPELLING = {"list_IDs": "image_ids", "img_dir": "image_dir", "img_size": "size"}


def _seed_spelling(kwargs: dict, *, image_ids, size: int, image_dir):
    """`image_ids`, `size` and `image_dir` with the seeds' spelling taken out of `kwargs`.

    Raises:
        GeneratorError: both spellings of one argument, a non-square ``img_size``, or no
            image IDs.
    """
    given = {"image_ids": image_ids, "size": size, "image_dir": image_dir}
    defaults = {"image_ids": None, "size": 256, "image_dir": None}
    for alias, name in SEED_SPELLING.items():
        if alias not in kwargs:
            continue
        value = kwargs.pop(alias)
        if given[name] != defaults[name]:
            raise GeneratorError(f"give `{name}` or its alias `{alias}`, not both. Received: {name}={given[name]!r}, {alias}={value!r}")  # fmt: skip
        if alias == "img_size" and not isinstance(value, int):
            rows, cols = value
            if rows != cols:
                raise GeneratorError(
                    f"`img_size` must be square: slices are padded to a square, then resized. Received: img_size={tuple(value)!r}"
                )
            value = rows
        given[name] = value
    if given["image_ids"] is None:
        raise GeneratorError("`image_ids` (or `list_IDs`) is required: the images to batch")
    return given["image_ids"], given["size"], given["image_dir"]


def _source(*, cache, work_dir, image_dir, source, spec: ImageSpec, context: int) -> ImageSource:
    options = {"cache": cache, "work_dir": work_dir, "image_dir": image_dir, "source": source}
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        raise GeneratorError(
            "pass `work_dir` (a prepared work folder), `cache` (a store made by rsna "
            "preprocess), `image_dir` (a folder of DICOM files) or `source` (an image "
            f"source): one of them. Received: {given or 'none'}"
        )
    if source is not None:
        if source.spec != spec:
            raise GeneratorError(
                f"{source} holds {source.spec.describe()}; asked for {spec.describe()}"
            )
        return source
    if isinstance(cache, ImageCache):
        if cache.spec != spec:
            raise GeneratorError(
                f"{cache.path} holds {cache.spec.describe()}; asked for {spec.describe()}"
            )
        return cache
    if cache is not None:
        return ImageCache(cache, expect=spec)
    if work_dir is not None:
        return DicomImages(work_dir, spec)
    return DicomFolder(image_dir, spec, scan_headers=context > 0)


def _the_view(view: View | str | None, *, hflip: bool) -> View:
    """The generator's view: `view` (a View, or the name of one view), or hflip's."""
    if view is None:
        return View("hflip" if hflip else "none")
    if isinstance(view, str):
        views = expand_views([view])
        if len(views) != 1:
            raise GeneratorError(f"`view` must be one view. Received: view={view!r}")
        view = views[0]
    if hflip and view.name != "hflip":
        raise GeneratorError(f"`hflip` and `view` disagree. Received: hflip=True, view={view!r}")
    return view


def _checked_ids(image_ids: Sequence[str], images: ImageSource) -> list[str]:
    ids = [str(i) for i in image_ids]
    if not ids:
        raise GeneratorError("`image_ids` is empty")
    missing = [i for i in ids if i not in images]
    if missing:
        raise GeneratorError(f"{len(missing)} image IDs are not in the source, e.g. {missing[0]!r}")
    return ids


def _targets(ids: list[str], labels: pd.DataFrame | None) -> np.ndarray:
    if labels is None:
        raise GeneratorError("`labels` is required when to_fit=True")
    missing = pd.Index(ids).difference(labels.index)
    if len(missing):
        raise GeneratorError(f"{len(missing)} images have no labels, e.g. {missing[0]!r}")
    return labels.loc[ids, list(LABELS)].to_numpy(np.float32)


#: Shared batch rings by key, in the process that made them: a worker's batch is
#: unpickled here as a view into its ring slot. Weak, so a ring goes with its generator.
_RINGS: weakref.WeakValueDictionary[str, _Ring] = weakref.WeakValueDictionary()


def _ring_view(key: str, slot: int, n: int) -> np.ndarray:
    """Unpickle a worker's batch: the first `n` rows of slot `slot` of ring `key`, leased
    to whoever holds the returned array (see :class:`_Ring`)."""
    return _RINGS[key].lease(slot, n)


class _RingBatch(np.ndarray):
    """A batch in a ring slot: it pickles as its place, not as its 12 MB of pixels."""

    def __reduce__(self):
        if not hasattr(self, "ring_key"):  # a slice or a selection of one (rows dropped): a copy
            return np.asarray(self).__reduce__()
        return (_ring_view, (self.ring_key, self.ring_slot, self.shape[0]))


class _Ring:
    """Shared memory for the batches of Keras's worker processes, handed over without copies.

    Keras returns each batch from a worker through a pipe, pickled: 12 MB for 64
    images of 256x256x3, which made two processes slower than none. Here a worker
    writes its batch into a slot of an anonymous shared mapping made before the
    processes fork, and sends back only the slot's number; the parent's array is a view
    of the slot, no copy.

    A slot is **leased** from the moment a worker claims it to write a batch (a test and
    set under a lock shared by the processes) until the last array the parent made from
    it is gone (a weakref finalizer clears the lease). A worker writes only into a slot
    it has claimed; when batch i's slot (i mod slots) is leased, it makes a fresh array,
    which travels pickled. So a batch in flight is never overwritten, whatever
    ``max_queue_size`` and ``workers`` are (Keras reads ``max_queue_size=0`` as an
    unbounded queue, so more batches can be in flight than there are slots: they travel
    pickled), and a batch never changes under whoever holds it. The ring has
    ``max_queue_size`` (8 when unbounded) plus the workers plus 2 slots.
    Needs the fork start method (Linux); elsewhere batches travel pickled, as Keras sends
    them.
    """

    def __init__(self, slots: int, batch: int, shape: tuple[int, ...]) -> None:
        self.slots, self.owner, self.key = slots, os.getpid(), uuid.uuid4().hex
        self.batch, self.shape = batch, tuple(shape)
        self.slot_bytes = batch * int(np.prod(shape))
        self._memory = mmap.mmap(-1, slots * self.slot_bytes + slots)
        self.array = np.frombuffer(self._memory, np.uint8, count=slots * self.slot_bytes)
        self.array = self.array.reshape(slots, batch, *shape)
        self.leases = np.frombuffer(
            self._memory, np.uint8, count=slots, offset=slots * self.slot_bytes
        )
        self._claim = multiprocessing.get_context("fork").Lock()  # shared by forked workers
        _RINGS[self.key] = self

    @classmethod
    def for_workers(cls, generator: keras.utils.PyDataset, shape: tuple[int, ...]) -> _Ring | None:
        uses_processes = generator.use_multiprocessing and generator.workers > 1
        if not uses_processes or multiprocessing.get_start_method(allow_none=False) != "fork":
            return None
        queue = generator.max_queue_size if generator.max_queue_size > 0 else 8
        return cls(queue + generator.workers + 2, generator.batch_size, shape)

    def slot(self, index: int, n: int) -> np.ndarray | None:
        """In a worker: where batch `index` goes, claimed for it, or None while its slot
        is leased (by a batch in flight, or one the parent still holds)."""
        slot = index % self.slots
        with self._claim:
            if self.leases[slot]:
                return None
            self.leases[slot] = 1
        view = self.array[slot, :n].view(_RingBatch)
        view.ring_key, view.ring_slot = self.key, slot
        return view

    def lease(self, slot: int, n: int) -> np.ndarray:
        """In the parent: a view of a slot's first `n` rows, leased until it is freed."""
        start = slot * self.slot_bytes
        row = self.slot_bytes // self.batch
        # A view made from a memoryview of its own, not from self.array: arrays made
        # from it (reshapes, slices, a tensor that wraps it) keep it alive, so the
        # finalizer runs only when the last of them is gone.
        owner = np.frombuffer(memoryview(self._memory)[start : start + n * row], np.uint8)
        self.leases[slot] = 1
        weakref.finalize(owner, self.leases.__setitem__, slot, 0)
        return owner.reshape(n, *self.shape)


class EpochSync(keras.callbacks.Callback):
    """Tell generators the epoch at its start, so a resumed run continues the sequence.

    ``BackupAndRestore`` restores only the epoch number; the generator's order and
    augmentation follow from it. Runs before Keras starts the epoch's workers. Serves
    any generator with ``set_epoch``: :class:`DataGenerator` and :class:`SeriesGenerator`.
    """

    def __init__(self, *generators: DataGenerator | SeriesGenerator) -> None:
        super().__init__()
        self.generators = generators

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Refuse ``steps_per_epoch`` below the first generator's length: Keras then keeps
        one iterator across epochs, which runs out of data, and an epoch would not be the
        pure function of ``(seed, epoch)`` that resuming relies on."""
        steps = (self.params or {}).get("steps")
        first = self.generators[0] if self.generators else None
        if first is not None and isinstance(first, keras.utils.PyDataset) and steps not in (None, len(first)):
            raise GeneratorError(
                f"`steps_per_epoch` must be len(generator)={len(first)} (or left out) with "
                f"EpochSync. Received: steps_per_epoch={steps}. For shorter epochs, build the "
                "generator on fewer image IDs"
            )

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for generator in self.generators:
            generator.set_epoch(epoch)


def as_tf_dataset(
    generator: DataGenerator, *, epochs: int = 1, start_epoch: int = 0, parallel: int | None = None
):
    """The generator's batches as a prefetched ``tf.data.Dataset``, epoch after epoch.

    Batches are loaded by ``tf.numpy_function`` on tf.data's threads (OpenCV and NumPy
    copies release the GIL) and come out in the same order, with the same content, as
    ``generator.load_batch(i, epoch=e)``. Use ``steps_per_epoch=len(generator)`` in fit.
    Distribute it with ``strategy.experimental_distribute_dataset``.
    """
    import tensorflow as tf

    n = len(generator)
    autotune = tf.data.AUTOTUNE
    shape = (None, *generator.sample_shape)
    x_type = tf.uint8 if generator.dtype == "uint8" else tf.float32

    def load(step):
        epoch, index = divmod(int(step), n)
        return generator.load_batch(index, epoch=epoch)

    def fetch(step):
        if generator.to_fit:
            x, y = tf.numpy_function(load, [step], (x_type, tf.float32))
            return tf.ensure_shape(x, shape), tf.ensure_shape(y, (None, len(LABELS)))
        x = tf.numpy_function(load, [step], x_type)
        return tf.ensure_shape(x, shape)

    steps = tf.data.Dataset.range(start_epoch * n, (start_epoch + epochs) * n)
    dataset = steps.map(fetch, num_parallel_calls=parallel or autotune, deterministic=True)
    return dataset.prefetch(autotune)


class SeriesGenerator(keras.utils.PyDataset):
    """Batches of whole series for stage 2, padded to the longest series and masked.

    Every batch has the same number of steps (the longest series in `series`): Keras
    fixes a ``PyDataset``'s shapes from its first batches, and static shapes suit XLA and
    TPUs. Padding costs little, as the series model is small beside the CNN.

    Returns ``({"slices": x, "mask": m}, y, m)`` for training (the mask doubles as the
    sample weight, so padded steps carry no loss) and ``{"slices": x, "mask": m}`` for
    prediction; x is (batch, steps, features), m is (batch, steps). Series are shuffled
    per epoch from ``(seed, epoch)`` as :class:`DataGenerator` shuffles images;
    `reverse` feeds every series back to front; `jitter` distorts each series' inputs
    (:func:`rsna.data.series.distort`), drawn from ``(seed, epoch, index)``; `position`
    says the series end in the :data:`rsna.data.series.GEOMETRY` columns.
    """

    def __init__(
        self,
        series: Series,
        labels: pd.DataFrame | None = None,
        *,
        batch_size: int = 8,
        shuffle: bool = False,
        seed: int = 0,
        reverse: bool = False,
        jitter: float = 0.0,
        position: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.series, self.uids, self.labels = series, sorted(series), labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.reverse, self.jitter, self.position = reverse, jitter, position
        self.steps = max((len(ids) for ids, _ in series.values()), default=0)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.uids) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batch_uids(self, index: int, *, epoch: int) -> list[str]:
        """The series of batch `index` of `epoch`."""
        order = epoch_order(len(self.uids), seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        return [
            self.uids[k] for k in order[index * self.batch_size : (index + 1) * self.batch_size]
        ]

    def __getitem__(self, index: int):
        uids = self.batch_uids(index, epoch=self.epoch)
        width = self.series[uids[0]][1].shape[1]
        x = np.zeros((len(uids), self.steps, width), np.float32)
        mask = np.zeros((len(uids), self.steps), np.float32)
        y = np.zeros((len(uids), self.steps, len(LABELS)), np.float32)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.jitter else None
        for b, uid in enumerate(uids):
            ids, values = self.series[uid]
            if self.reverse:
                ids, values = ids[::-1], reversed_series(values, position=self.position)
            if rng is not None:
                values = distort(values, rng, self.jitter, position=self.position)
            x[b, : len(ids)] = values
            mask[b, : len(ids)] = 1.0
            if self.labels is not None:
                y[b, : len(ids)] = self.labels.loc[ids, list(LABELS)].to_numpy(np.float32)
        inputs = {"slices": x, "mask": mask}
        return (inputs, y, mask) if self.labels is not None else inputs

    def image_order(self) -> list[str]:
        """Image IDs in the order of the series and their slices."""
        return [i for uid in self.uids for i in self.series[uid][0]]


class PaddedBatches(keras.utils.PyDataset):
    """A prediction dataset whose short last batch is padded to `rows` (its last row
    repeated), so every batch has the same shape.

    Static shapes suit TPUs, and with `rows` a multiple of a ``tf.distribute`` strategy's
    replicas no replica gets an empty share (which MirroredStrategy cannot run). Every
    batch but the last must already hold `rows`; keep the first ``len(image_ids)`` rows
    of the predictions (:func:`trim`).
    """

    def __init__(self, inner: keras.utils.PyDataset, *, rows: int) -> None:
        super().__init__()
        if rows < 1:
            raise GeneratorError(f"`rows` must be positive. Received: rows={rows}")
        self.inner, self.rows = inner, rows

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> np.ndarray:
        x = self.inner[index]
        if len(x) > self.rows or (len(x) < self.rows and index != len(self) - 1):
            raise GeneratorError(
                f"batch {index} of {len(self)} holds {len(x)} rows; only the last may hold "
                f"fewer than rows={self.rows}, and none more"
            )
        if len(x) < self.rows:
            x = np.concatenate([x, np.repeat(x[-1:], self.rows - len(x), axis=0)])
        return x


def trim(predictions, n: int):
    """The first `n` rows of each output of ``model.predict`` (one array or a list)."""
    if isinstance(predictions, (list, tuple)):
        return [p[:n] for p in predictions]
    return predictions[:n]
