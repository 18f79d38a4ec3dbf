"""Where windowed images come from: the DICOM files, or a preprocessed cache.

``rsna preprocess`` turns every slice into its windowed uint8 image once, in shards::

    WORK/cache/<name>/cache.json              size, windows, curve: what the cache holds
    WORK/cache/<name>/index.parquet           image_id -> shard, row, ok, reason
    WORK/cache/<name>/shard-00000.npy         uint8 (rows, size, size, channels)
    WORK/cache/<name>/shard-00000.status.json ok and reason per row of that shard

Why sharded ``.npy``: reading is a memory-mapped copy of a contiguous row (no decoding,
about 20 us for 256x256x3), the files are few (750k slices make ~730 shards, not 750k
files), and a shard is either complete or absent. PNG saves about 3x on disk but costs
about 1 ms a slice to decode, which cannot feed a GPU from two cores. The cost is disk:
``size * size * channels`` bytes per slice (196 kB at 256x256x3).

Images are ordered by split, series and slice index, so a slice's neighbours are in the
same shard. A shard is written to a temporary file by worker processes, each writing its
own rows, then moved into place; its status file is written first. A killed run therefore
leaves only whole shards, and a rerun redoes the rest, byte for byte as an uninterrupted
run would.

:class:`ImageCache` and :class:`DicomImages` share one interface, ``read(image_id)`` and
``readable(image_id)``, so the generator takes either.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files
from rsna.data.metadata import data_dir, read_metadata
from rsna.data.windowing import DEFAULT_WINDOWS, Curve, Preprocessor, Window, window_name
from rsna.errors import RsnaError
from rsna.parallel import parallel_map

__all__ = [
    "CACHE_VERSION",
    "INDEX_FILE",
    "SPEC_FILE",
    "CacheError",
    "CacheResult",
    "CacheSpec",
    "DicomImages",
    "ImageCache",
    "build_cache",
    "built_cache",
    "cache_dir",
]

CACHE_VERSION = 1
SPEC_FILE, INDEX_FILE = "cache.json", "index.parquet"


class CacheError(RsnaError):
    """A cache is missing, incomplete, or holds other images than asked for."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: every slice preprocessed with these options."""

    size: int = 256
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    curve: Curve = "linear"

    def __post_init__(self) -> None:
        """Check the options as :class:`~rsna.data.windowing.Preprocessor` would, before
        anything is written."""
        Preprocessor(windows=self.windows, size=self.size, curve=self.curve, reuse_buffers=False)

    @property
    def channels(self) -> int:
        return len(self.windows)

    @property
    def name(self) -> str:
        """A folder name that tells caches apart, e.g. ``256_brain-subdural-soft``."""
        names = "-".join(window_name(w).replace("/", "_") for w in self.windows)
        suffix = "" if self.curve == "linear" else f"_{self.curve}"
        return f"{self.size}_{names}{suffix}"

    def to_json(self) -> dict:
        return {
            "version": CACHE_VERSION,
            "size": self.size,
            "windows": [{"center": w.center, "width": w.width} for w in self.windows],
            "curve": self.curve,
        }

    @classmethod
    def from_json(cls, data: dict) -> CacheSpec:
        windows = tuple(Window(center=w["center"], width=w["width"]) for w in data["windows"])
        return cls(size=int(data["size"]), windows=windows, curve=data["curve"])

    def describe(self) -> str:
        names = ",".join(window_name(w) for w in self.windows)
        return f"size={self.size}, windows={names}, curve={self.curve}"


def cache_dir(work_dir: str | os.PathLike[str], spec: CacheSpec) -> Path:
    """The default folder of the cache for `spec` in a work folder."""
    return Path(work_dir) / "cache" / spec.name


def built_cache(work_dir: str | os.PathLike[str], spec: CacheSpec) -> Path | None:
    """The default cache folder for `spec` if ``rsna preprocess`` has started it, else None."""
    path = cache_dir(work_dir, spec)
    return path if (path / SPEC_FILE).exists() else None


# ------------------------------------------------------------------------------ building


@dataclass(frozen=True)
class CacheResult:
    """What :func:`build_cache` did."""

    path: Path
    images: int
    shards_written: int
    shards_reused: int
    unreadable: dict[str, str]


def build_cache(
    work_dir: str | os.PathLike[str],
    spec: CacheSpec = CacheSpec(),
    *,
    out: str | os.PathLike[str] | None = None,
    shard_size: int = 1024,
    workers: int | None = None,
    force: bool = False,
) -> CacheResult:
    """Preprocess every slice of a prepared work folder into a sharded cache.

    Resumes: finished shards are kept, the rest are redone.

    Raises:
        CacheError: the folder holds a cache made with other options (pass `force`
            to replace it), or `shard_size` is not positive.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise CacheError(
            f"`shard_size` must be a positive integer. Received: shard_size={shard_size!r}"
        )
    root = Path(out) if out is not None else cache_dir(work_dir, spec)
    meta = read_metadata(work_dir)  # a wrong work folder fails here, before anything is written
    _claim(root, spec, shard_size, force=force)
    order = meta.sort_values(["split", "series_uid", "slice_index"], kind="stable").index
    base = data_dir(work_dir)
    paths = [str(base / rel) for rel in meta.loc[order, "file"]]
    readable = meta.loc[order, "readable"].to_numpy()
    reasons = meta.loc[order, "reason"].to_numpy()
    shards = [range(i, min(i + shard_size, len(order))) for i in range(0, len(order), shard_size)]
    todo = [k for k in range(len(shards)) if not _shard_done(root, k)]
    jobs, temps = [], {}
    for k in todo:
        temps[k] = _new_shard(root, k, len(shards[k]), spec)
        jobs.extend(
            (str(temps[k]), row, paths[i], bool(readable[i]), str(reasons[i]))
            for row, i in enumerate(shards[k])
        )
    results = parallel_map(_ShardWriter(spec), jobs, workers=workers, desc="preprocess", unit="img")
    for k in todo:
        status = [next(results) for _ in shards[k]]
        files.write_json(
            _status_path(root, k), {"ok": [s[0] for s in status], "reason": [s[1] for s in status]}
        )
        os.replace(temps[k], _shard_path(root, k))
    index = _write_index(root, meta.loc[order, ["series_uid", "slice_index"]], shards)
    unreadable = index.loc[~index["ok"], "reason"].to_dict()
    files.write_json(
        root / SPEC_FILE,
        {**spec.to_json(), "shard_size": shard_size, "images": len(order), "complete": True},
    )
    return CacheResult(root, len(order), len(todo), len(shards) - len(todo), unreadable)


def _claim(root: Path, spec: CacheSpec, shard_size: int, *, force: bool) -> None:
    """Make `root` a cache of `spec`, refusing to mix options with an existing one."""
    spec_path = root / SPEC_FILE
    if spec_path.exists():
        old = files.read_json(spec_path)
        same = CacheSpec.from_json(old) == spec and old.get("shard_size") == shard_size
        if not same and not force:
            raise CacheError(
                f"{root} holds a cache made with {CacheSpec.from_json(old).describe()}, "
                f"shard_size={old.get('shard_size')}; asked for {spec.describe()}, "
                f"shard_size={shard_size}. Use another folder, or force=True (--force) to replace it"
            )
        if not same:
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    if not spec_path.exists():
        files.write_json(spec_path, {**spec.to_json(), "shard_size": shard_size, "complete": False})


def _shard_path(root: Path, k: int) -> Path:
    return root / f"shard-{k:05d}.npy"


def _status_path(root: Path, k: int) -> Path:
    return root / f"shard-{k:05d}.status.json"


def _shard_done(root: Path, k: int) -> bool:
    return _shard_path(root, k).exists() and _status_path(root, k).exists()


def _new_shard(root: Path, k: int, rows: int, spec: CacheSpec) -> Path:
    """A zero-filled temporary shard file that workers fill row by row."""
    temp = root / f".shard-{k:05d}.partial.npy"
    shape = (rows, spec.size, spec.size, spec.channels)
    np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=shape).flush()
    return temp


class _ShardWriter:
    """Preprocess one slice into its row of a temporary shard (runs in a worker)."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self._preprocessor: Preprocessor | None = None
        self._maps: dict[str, np.memmap] = {}

    def __getstate__(self) -> dict:
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"])

    def __call__(self, job: tuple[str, int, str, bool, str]) -> tuple[bool, str]:
        temp, row, path, readable, reason = job
        if not readable:
            return False, reason  # the row stays zeros
        if self._preprocessor is None:
            spec = self.spec
            self._preprocessor = Preprocessor(
                windows=spec.windows, size=spec.size, curve=spec.curve
            )
        try:
            image = self._preprocessor(path)
        except RsnaError as exc:
            return False, str(exc)
        if temp not in self._maps:
            self._maps = {temp: np.load(temp, mmap_mode="r+")}  # one shard at a time
        self._maps[temp][row] = image
        return True, ""


def _write_index(root: Path, slices: pd.DataFrame, shards: list[range]) -> pd.DataFrame:
    """image_id -> shard, row, ok, reason, plus series_uid and slice_index for context."""
    shard, row, ok, reason = [], [], [], []
    for k, rows in enumerate(shards):
        status = files.read_json(_status_path(root, k))
        shard += [k] * len(rows)
        row += list(range(len(rows)))
        ok += status["ok"]
        reason += status["reason"]
    index = slices.assign(shard=shard, row=row, ok=ok, reason=reason)
    index.index.name = "image_id"
    index = index.astype({"shard": "int32", "row": "int32", "ok": "bool", "slice_index": "int64"})
    files.write_parquet(index, root / INDEX_FILE)
    return index


# ------------------------------------------------------------------------------ reading


class _ImageSource:
    """What the generator needs of a source: membership, readability, and images.

    Subclasses set ``spec``, ``slices`` (series_uid, slice_index per image), ``_ok``
    (image_id -> readable) and ``_reason`` (image_id -> why not), and implement
    :meth:`read_into`, and :meth:`_open` for what each process must open for itself.
    """

    spec: CacheSpec
    _ok: dict
    _reason: dict
    #: Attributes that belong to one process (open files, locks, thread-locals): they are
    #: not pickled, and :meth:`_open` makes them anew where the source lands.
    _per_process: tuple[str, ...] = ("_shards", "_lock", "_local")

    def _open(self) -> None:
        """Make this process's open files, locks and thread-locals."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._per_process}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self._ok)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._ok

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.spec.size, self.spec.size, self.spec.channels)

    def readable(self, image_id: str) -> bool:
        """False for slices that cannot be read (flagged by prepare, or zeros in a cache)."""
        return bool(self._ok[self._locate(image_id)])

    def reason(self, image_id: str) -> str:
        """Why a slice is not readable ("" if it is)."""
        return self._reason.get(image_id, "")

    def read(self, image_id: str) -> np.ndarray:
        """The uint8 (size, size, channels) image of one slice, as a fresh array."""
        out = np.empty(self.shape, np.uint8)
        self.read_into(image_id, out)
        return out

    def read_into(self, image_id: str, out: np.ndarray) -> None:
        raise NotImplementedError

    def _locate(self, image_id: str) -> str:
        if image_id not in self._ok:
            raise CacheError(f"{self}: image {image_id!r} is not here")
        return image_id


class ImageCache(_ImageSource):
    """Read windowed images from a cache made by :func:`build_cache`.

    Shards are memory-mapped on first use, in each process (a pickled cache reopens its
    shards where it lands). Thread-safe for reading.

    Raises:
        CacheError: missing or incomplete cache, or one made with other options than
            `expect`.
    """

    def __init__(self, path: str | os.PathLike[str], *, expect: CacheSpec | None = None) -> None:
        self.path = Path(path)
        spec_path = self.path / SPEC_FILE
        if not spec_path.exists():
            raise CacheError(
                f"{self.path}: no cache here (no {SPEC_FILE}); run `rsna preprocess` first"
            )
        stored = files.read_json(spec_path)
        if not stored.get("complete"):
            raise CacheError(
                f"{self.path}: the cache is incomplete; rerun `rsna preprocess` to finish it"
            )
        self.spec = CacheSpec.from_json(stored)
        if expect is not None and expect != self.spec:
            raise CacheError(
                f"{self.path} holds images made with {self.spec.describe()}; asked for {expect.describe()}"
            )
        index = pd.read_parquet(self.path / INDEX_FILE)
        self.slices = index[["series_uid", "slice_index"]]
        self._row = dict(
            zip(
                index.index,
                zip(index["shard"].to_numpy(), index["row"].to_numpy(), strict=True),
                strict=True,
            )
        )
        self._ok = dict(zip(index.index, index["ok"].to_numpy(), strict=True))
        self._reason = index.loc[~index["ok"], "reason"].to_dict()
        self._open()

    def _open(self) -> None:
        self._shards: dict[int, np.ndarray] = {}  # memory maps, opened on first use
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImageCache({self.path})"

    def read_into(self, image_id: str, out: np.ndarray) -> None:
        """Copy one slice's image into `out` (a view into a batch): one copy, no allocation."""
        shard, row = self._row[self._locate(image_id)]
        np.copyto(out, self._shard(int(shard))[row])

    def _shard(self, k: int) -> np.ndarray:
        shard = self._shards.get(k)
        if shard is None:
            with self._lock:
                shard = self._shards.get(k)
                if shard is None:
                    shard = np.load(self.path / f"shard-{k:05d}.npy", mmap_mode="r")
                    self._shards[k] = shard
        return shard


class DicomImages(_ImageSource):
    """Read windowed images straight from the DICOM files of a prepared work folder.

    One :class:`~rsna.data.windowing.Preprocessor` per thread, created on first use.
    """

    def __init__(self, work_dir: str | os.PathLike[str], spec: CacheSpec = CacheSpec()) -> None:
        self.spec = spec
        meta = read_metadata(work_dir)
        base = data_dir(work_dir)
        self.slices = meta[["series_uid", "slice_index"]]
        self._path = {i: str(base / f) for i, f in zip(meta.index, meta["file"], strict=True)}
        self._ok = dict(zip(meta.index, meta["readable"].to_numpy(), strict=True))
        self._reason = meta.loc[~meta["readable"], "reason"].to_dict()
        self._open()

    def _open(self) -> None:
        self._local = threading.local()  # one Preprocessor per thread

    def __repr__(self) -> str:
        return f"DicomImages({len(self._path)} slices)"

    def read(self, image_id: str) -> np.ndarray:
        """The uint8 (size, size, channels) image of one slice.

        Raises:
            rsna.data.dicom.DicomError: the file cannot be read.
        """
        preprocessor = getattr(self._local, "preprocessor", None)
        if preprocessor is None:
            spec = self.spec
            preprocessor = Preprocessor(windows=spec.windows, size=spec.size, curve=spec.curve)
            self._local.preprocessor = preprocessor
        return preprocessor(self._path[self._locate(image_id)])

    def read_into(self, image_id: str, out: np.ndarray) -> None:
        """Preprocess one slice into `out` (a view into a batch)."""
        np.copyto(out, self.read(image_id))
