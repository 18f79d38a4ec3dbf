"""The preprocessed store: every slice windowed once, compressed, in TFRecord shards.

``rsna preprocess`` writes::

    WORK/cache/<spec>_<codec>/cache.json                spec, codec (name, level, version,
                                                        lossless), shards, images, complete
    WORK/cache/<spec>_<codec>/index.parquet             image_id -> shard, row, offset, length,
                                                        ok, reason, series_uid, slice_index
    WORK/cache/<spec>_<codec>/shard-00000.tfrecord      one record per slice, in series order
    WORK/cache/<spec>_<codec>/shard-00000.status.json   ok, reason, offset, length per row

* **Codec** (:mod:`rsna.data.codecs`): ``none`` (raw bytes), ``lossless`` (zstd, the
  default) or ``lossy`` (JPEG). ``cache.json`` records it; a store read with another
  codec, spec or codec format version is an error, never a wrong image.
* **Container**: TFRecord (:mod:`rsna.data.records`), so ``tf.data.TFRecordDataset``
  streams a store from any path ``tf.io.gfile`` knows, ``gs://`` included, and the index's
  offsets give random access by image ID. Every record carries CRC-32C checksums: a
  corrupted byte fails loudly, naming the shard and the image.
* **Shards** follow the series: a shard holds whole series, ``shard_size`` slices or a
  little more, ordered by split, series and slice index. A slice's context neighbours
  are always in its own shard, so a stream decodes each slice once. An unreadable slice
  keeps its row as an empty record.
* **Resumable and atomic**: a shard is written to a temporary file, its status file is
  written, then the shard is moved into place. A killed run leaves whole shards only,
  and a rerun redoes the rest, byte for byte as an uninterrupted run would.
* **Parts across machines**: ``num_shards``/``shard_index`` give machine i the shards
  k with k % N == i, all writing into one folder (shared storage, or folders merged
  afterwards). The part that finds every shard done writes the index; otherwise a plain
  run (no parts) writes it, redoing only what is missing. No image is copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import pandas as pd

from rsna import files
from rsna.data.codecs import Codec, CodecError, codec_for
from rsna.data.crop import HEAD_HU
from rsna.data.metadata import data_dir, read_metadata
from rsna.data.records import RecordError, read_record, write_records
from rsna.data.sources import ImageSource, ImageSpec
from rsna.errors import DataWarning, RsnaError
from rsna.parallel import parallel_map

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "SPEC_FILE",
    "CacheError",
    "StoreMissing",
    "CacheResult",
    "ImageCache",
    "build_cache",
    "cache_dir",
    "complete_store",
    "read_store_json",
    "record_tag",
    "spec_id",
    "plan_shards",
]

#: The layout version of a store: 1 was raw .npy shards, 2 TFRecord shards, 3 adds each
#: record's tag (its image ID and the store's spec bound into one CRC-32C) and each
#: shard's build spec.
FORMAT_VERSION = 3
SPEC_FILE, INDEX_FILE = "cache.json", "index.parquet"


class CacheError(RsnaError):
    """A store is missing, incomplete, corrupted, or holds other images than asked for."""


def cache_dir(work_dir: str | os.PathLike[str], spec: ImageSpec, codec: Codec) -> Path:
    """The default folder of the store of `spec` and `codec` in a work folder."""
    return Path(work_dir) / "cache" / f"{spec.name}_{codec.tag}"


class StoreMissing(CacheError):
    """A config reads a store (``data.cache = true``) that is not built, or not finished."""


def complete_store(work_dir: str | os.PathLike[str], spec: ImageSpec, codec: Codec) -> Path:
    """The finished store of `spec` and `codec` in a work folder.

    Raises:
        StoreMissing: the store is absent or unfinished; the message names the folder
            and the stores the work folder holds instead (a config never falls back to
            reading the DICOMs in silence).
    """
    path = cache_dir(work_dir, spec, codec)
    stored = read_store_json(path / SPEC_FILE) if (path / SPEC_FILE).is_file() else None
    if stored is not None and stored.get("complete"):
        return path
    state = "is unfinished (rerun the same command: it resumes)" if stored else "is not built"
    others = sorted(p.parent.name for p in (Path(work_dir) / "cache").glob(f"*/{SPEC_FILE}"))
    others = [name for name in others if name != path.name]
    found = f"; the work folder holds only: {', '.join(others)}" if others else ""
    raise StoreMissing(
        f"the store this config reads ({spec.describe()}, codec={codec.tag}) {state}: {path}{found}"
    )


def plan_shards(order: pd.DataFrame, shard_size: int) -> list[range]:
    """Consecutive row ranges of `order` (sorted by series and slice), each whole series,
    closed once it holds at least `shard_size` rows; images without a series stand alone."""
    series = order["series_uid"].to_numpy()
    shards, start = [], 0
    for row in range(1, len(series) + 1):
        at_end = row == len(series)
        boundary = at_end or series[row] != series[row - 1] or series[row] == ""
        if boundary and (row - start >= shard_size or at_end):
            shards.append(range(start, row))
            start = row
    return shards


# ------------------------------------------------------------------------------ building


@dataclass(frozen=True)
class CacheResult:
    """What :func:`build_cache` did."""

    path: Path
    images: int
    shards_written: int
    shards_reused: int
    shards_missing: int  # left to other parts; 0 when the store is complete
    unreadable: dict[str, str]
    bytes: int  # on disk, over the shards that exist
    #: Readable slices that a head crop left at their full field of view (no head found).
    full_view: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.shards_missing == 0


def build_cache(
    work_dir: str | os.PathLike[str],
    spec: ImageSpec,
    *,
    codec: Codec | None = None,
    out: str | os.PathLike[str] | None = None,
    shard_size: int = 1024,
    workers: int | None = None,
    force: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    check_disk: bool = True,
) -> CacheResult:
    """Preprocess every slice of a prepared work folder into a store; resume a killed run.

    After its first shard, the build prints the bytes a slice and the projected store,
    and with `check_disk` stops (keeping what it wrote) if the rest would not fit on the
    store's disk.

    Args:
        work_dir: a work folder made by ``rsna prepare``.
        spec: size, windows and curve.
        codec: how images are stored (default: lossless).
        out: the store folder (default: :func:`cache_dir`).
        shard_size: slices per shard, rounded up to whole series.
        workers: processes (default: all cores).
        force: replace a store made with other options.
        num_shards, shard_index: do only part `shard_index` of `num_shards` (one
            machine's share); see the module docstring.

    Raises:
        CacheError: bad options, the folder holds a cache made with other options, or
            the projected store does not fit on its disk.
    """
    codec = codec or codec_for("lossless")
    _check_options(shard_size=shard_size, num_shards=num_shards, shard_index=shard_index)
    meta = read_metadata(work_dir)  # a wrong work folder fails here, before anything is written
    root = Path(out) if out is not None else cache_dir(work_dir, spec, codec)
    order = meta.sort_values(["split", "series_uid", "slice_index"], kind="stable")
    shards = plan_shards(order, shard_size)
    _claim(root, spec, codec, shard_size, shards=len(shards), force=force)
    base = data_dir(work_dir)
    paths = [str(base / rel) for rel in order["file"]]
    readable, reasons = order["readable"].to_numpy(), order["reason"].to_numpy()
    mine = [k for k in range(len(shards)) if k % num_shards == shard_index]
    built = {"id": spec_id(spec, codec), "describe": f"{spec.describe()}, codec={codec.tag}"}
    for k in range(len(shards)):  # finished shards, this part's or another's: the same build?
        if _shard_done(root, k):
            _shard_status(root, k, built=built)
    todo = [k for k in mine if not _shard_done(root, k)]
    jobs = [(paths[i], bool(readable[i]), str(reasons[i])) for k in todo for i in shards[k]]
    encoded = parallel_map(
        _Encoder(spec, codec), jobs, workers=workers, desc="preprocess", unit="img"
    )
    try:
        for i, k in enumerate(todo):
            _write_shard(root, k, [next(encoded) for _ in shards[k]], order.index[shards[k]], built=built)
            if i == 0 and check_disk:
                _check_disk(root, shards, left=[shards[j] for j in todo[1:]], total=len(order))
    finally:
        encoded.close()  # an error stops the workers' queued slices too
    missing = sum(not _shard_done(root, k) for k in range(len(shards)))
    unreadable: dict[str, str] = {}
    full_view: tuple[str, ...] = ()
    if missing == 0:
        index = _write_index(root, order[["series_uid", "slice_index"]], shards, built=built)
        unreadable = index.loc[~index["ok"], "reason"].to_dict()
        full_view = tuple(index.index[index["ok"] & index["full_view"]])
        files.write_json(root / SPEC_FILE, _spec_json(spec, codec, shard_size, len(shards), complete=True, images=len(order), full_view=len(full_view)))  # fmt: skip
        if full_view:
            warnings.warn(
                f"{root}: {len(full_view)} of {len(order)} slices show no head (nothing above "
                f"{HEAD_HU:g} HU) and keep their full field of view; they are listed in "
                f"{INDEX_FILE} (column full_view)",
                DataWarning,
                stacklevel=2,
            )
    size = sum(p.stat().st_size for p in root.glob("shard-*.tfrecord"))
    reused = len(mine) - len(todo)
    return CacheResult(root, len(order), len(todo), reused, missing, unreadable, size, full_view)


def _check_disk(root: Path, shards: list[range], *, left: list[range], total: int) -> None:
    """Project the store from the shards on disk; refuse what the free disk cannot hold.

    Raises:
        CacheError: the shards still to write would not fit; the finished ones stay.
    """
    done = [(k, r) for k, r in enumerate(shards) if _shard_done(root, k)]
    written = sum(_shard_path(root, k).stat().st_size for k, _ in done)
    images = sum(len(r) for _, r in done)
    per_slice = written / max(images, 1)
    needed = per_slice * sum(len(r) for r in left)
    free = shutil.disk_usage(root).free
    print(
        f"store: {per_slice / 1000:.1f} kB a slice on {len(done)} shard(s); projected "
        f"{per_slice * total / 1e9:.2f} GB for {total:,} slices; this run writes "
        f"{needed / 1e9:.2f} GB more, {free / 1e9:.1f} GB free",
        flush=True,
    )
    if needed > free:
        raise CacheError(
            f"{root}: the store would not fit: {needed / 1e9:.2f} GB still to write "
            f"({per_slice / 1000:.1f} kB a slice x {sum(len(r) for r in left):,} slices), "
            f"{free / 1e9:.2f} GB free on its disk. The {len(done)} finished shard(s) are "
            "kept. Free space and rerun (it resumes), move the work folder (data.work_dir) to a "
            "bigger disk, or choose a smaller store (data.quality, image.size, "
            "data.compression) and rerun with --force"
        )


def _check_options(*, shard_size: int, num_shards: int, shard_index: int) -> None:
    for name, value, low in (("shard_size", shard_size, 1), ("num_shards", num_shards, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CacheError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if (
        isinstance(shard_index, bool)
        or not isinstance(shard_index, int)
        or not 0 <= shard_index < num_shards
    ):
        raise CacheError(
            f"`shard_index` must be in [0, num_shards={num_shards}). Received: shard_index={shard_index!r}"
        )


def _spec_json(spec: ImageSpec, codec: Codec, shard_size: int, shards: int, **extra) -> dict:
    return {"format": FORMAT_VERSION, **spec.to_json(), "codec": codec.to_json(), "shard_size": shard_size, "shards": shards, **extra}  # fmt: skip


def _without_library(codec_json: dict) -> dict:
    """A codec's description without the version of the library that ran it: stores made
    by another zstd or OpenCV release hold the same format."""
    return {k: v for k, v in codec_json.items() if k != "library"}


def spec_id(spec: ImageSpec, codec: Codec) -> str:
    """A short digest of what a store holds (the spec and the codec, not its library's
    version), bound into every record's tag and recorded by every shard."""
    wanted = {**spec.to_json(), "codec": _without_library(codec.to_json())}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def record_tag(image_id: str, spec_digest: str, data: bytes | memoryview) -> int:
    """CRC-32C of the image ID, the store's spec digest and the record's data: a record
    read for another image, or from a store of other options, fails its tag."""
    head = google_crc32c.value(f"{image_id}\0{spec_digest}\0".encode())
    return google_crc32c.extend(head, bytes(data) if isinstance(data, memoryview) else data)


def _claim(
    root: Path, spec: ImageSpec, codec: Codec, shard_size: int, *, shards: int, force: bool
) -> None:
    """Make `root` a store of `spec` and `codec`, refusing to mix options with another."""
    spec_path = root / SPEC_FILE
    if spec_path.exists():
        old = read_store_json(spec_path)
        wanted = _spec_json(spec, codec, shard_size, shards)
        same = all(old.get(k) == v for k, v in wanted.items() if k != "codec") and (
            _without_library(old.get("codec", {})) == _without_library(wanted["codec"])
        )
        if not same and not force:
            raise CacheError(
                f"{root} holds a cache made with {_describe(old)}; asked for "
                f"{spec.describe()}, codec={codec.tag}, shard_size={shard_size}. Use another "
                "folder, or force=True (--force) to replace it"
            )
        if not same:
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    if not spec_path.exists():
        files.write_json(spec_path, _spec_json(spec, codec, shard_size, shards, complete=False))


def _describe(stored: dict) -> str:
    if stored.get("format") != FORMAT_VERSION:
        return f"rsna's store format {stored.get('format', 1)} (this rsna writes {FORMAT_VERSION})"
    codec = stored.get("codec", {})
    spec = ImageSpec.from_json(stored)
    return f"{spec.describe()}, codec={codec.get('name')}{codec.get('level', '')}, shard_size={stored.get('shard_size')}"


def _shard_path(root: Path, k: int) -> Path:
    return root / f"shard-{k:05d}.tfrecord"


def _status_path(root: Path, k: int) -> Path:
    return root / f"shard-{k:05d}.status.json"


def _shard_done(root: Path, k: int) -> bool:
    return _shard_path(root, k).exists() and _status_path(root, k).exists()


class _Encoder:
    """Preprocess and encode one slice (runs in a worker process)."""

    def __init__(self, spec: ImageSpec, codec: Codec) -> None:
        self.spec, self.codec = spec, codec
        self._preprocessor = None

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "codec": self.codec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["codec"])

    def __call__(self, job: tuple[str, bool, str]) -> tuple[bool, str, bytes, bool]:
        """(ok, reason, encoded image, kept the full view although a head crop was asked)."""
        path, readable, reason = job
        if not readable:
            return False, reason, b"", False
        if self._preprocessor is None:
            self._preprocessor = self.spec.preprocessor()
        try:
            blob = self.codec.encode(self._preprocessor(path))
        except RsnaError as exc:
            return False, str(exc), b"", False
        return True, "", blob, self.spec.crop != "none" and self._preprocessor.last_box is None


def _write_shard(root: Path, k: int, results: list, image_ids: pd.Index, *, built: dict) -> None:
    """Write shard k's records to a temporary file, its status (with the build's spec and
    each record's tag), then move it into place."""
    temp = root / f".shard-{k:05d}.partial.tfrecord"
    blobs = [blob for _, _, blob, _ in results]
    with open(temp, "wb") as fh:
        placed = write_records(fh, blobs)
        fh.flush()
        os.fsync(fh.fileno())
    status = {
        "spec": built,
        "tag": [record_tag(i, built["id"], b) for i, b in zip(image_ids, blobs, strict=True)],
        "image_id": list(image_ids),
        "ok": [ok for ok, _, _, _ in results],
        "reason": [reason for _, reason, _, _ in results],
        "full_view": [full for _, _, _, full in results],
        "offset": [offset for offset, _ in placed],
        "length": [length for _, length in placed],
    }
    files.write_json(_status_path(root, k), status)
    os.replace(temp, _shard_path(root, k))


def _shard_status(root: Path, k: int, *, built: dict) -> dict:
    """Shard k's status file, checked: readable, complete, and made with `built`'s spec.

    Raises:
        CacheError: naming the shard, and both specs when another build made it (a part
            built elsewhere with other options is never merged).
    """
    path = _status_path(root, k)
    status = read_store_json(path)
    keys = ("spec", "tag", "image_id", "ok", "reason", "full_view", "offset", "length")
    missing = [key for key in keys if key not in status]
    if missing:
        raise CacheError(f"{path}: not a status file of this rsna (no {missing}); rebuild the store with --force")  # fmt: skip
    theirs = status["spec"]
    if not isinstance(theirs, dict) or theirs.get("id") != built["id"]:
        raise CacheError(
            f"{path}: shard {k} was built with other options ({theirs.get('describe') if isinstance(theirs, dict) else theirs}) "
            f"than this store ({built['describe']}); rebuild that part with the same config, or --force"
        )
    lengths = {len(status[key]) for key in keys[1:]}
    if len(lengths) != 1:
        raise CacheError(f"{path}: its columns have different lengths {sorted(lengths)}; rebuild with --force")  # fmt: skip
    return status


def read_store_json(path: Path) -> dict:
    """A store's JSON file (cache.json or a shard's status), or a CacheError naming it."""
    try:
        data = files.read_json(path)
    except FileNotFoundError:
        raise CacheError(f"{path}: missing; rerun `rsna preprocess`") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CacheError(f"{path}: unreadable ({' '.join(str(exc).split())}); rerun `rsna preprocess --force`") from None  # fmt: skip
    if not isinstance(data, dict):
        raise CacheError(f"{path}: not a JSON object; rerun `rsna preprocess --force`")
    return data


def _write_index(root: Path, slices: pd.DataFrame, shards: list[range], *, built: dict) -> pd.DataFrame:
    """image_id -> shard, row, offset, length, ok, reason, series_uid, slice_index."""
    parts = []
    for k, rows in enumerate(shards):
        status = _shard_status(root, k, built=built)
        if status["image_id"] != list(slices.index[rows]):
            raise CacheError(f"{_status_path(root, k)}: the shard holds other images than planned; rebuild with --force")  # fmt: skip
        parts.append(pd.DataFrame({"shard": k, "row": range(len(rows)), **{c: status[c] for c in ("offset", "length", "ok", "reason", "full_view", "tag")}}))  # fmt: skip
    index = pd.concat(parts, ignore_index=True)
    index.index = slices.index
    index = pd.concat([index, slices], axis=1)
    index = index.astype({"shard": "int32", "row": "int32", "offset": "int64", "length": "int32", "ok": "bool", "full_view": "bool", "slice_index": "int64", "tag": "uint32"})  # fmt: skip
    files.write_parquet(index, root / INDEX_FILE)
    return index


# ------------------------------------------------------------------------------ reading


class ImageCache(ImageSource):
    """Read windowed images from a store made by :func:`build_cache`, by image ID.

    Each read takes one record with ``os.pread`` (so threads and forked processes share
    the open files), checks its CRC-32C checksums, and decodes it into the caller's
    array. Nothing is memory-mapped, so reading a whole epoch does not grow the
    process's memory.

    Raises:
        CacheError: a missing or incomplete store, one of another format version, or one
            made with other options than `expect` or another codec than `codec`.
    """

    _per_process = ("_fds", "_lock")
    error = CacheError

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        expect: ImageSpec | None = None,
        codec: Codec | None = None,
        read_bytes: Callable[[str], bytes] | None = None,
    ) -> None:
        """Open the store at `path`. With `read_bytes` (a function from a file's location
        to its bytes, e.g. through ``tf.io.gfile`` for ``gs://``), `path` is a URL whose
        cache.json and index.parquet are read with it; such a store is streamed
        (:func:`rsna.training.streaming.stream_dataset`), not read by image ID."""
        self.remote = read_bytes is not None
        self.location = str(path).rstrip("/")
        self.path = Path(path) if not self.remote else Path(self.location.split("://")[-1])
        self._read_bytes = read_bytes
        stored = self._stored()
        try:
            self.spec = ImageSpec.from_json(stored)
            self.codec = Codec.from_json(stored["codec"], where=f"{self.path}: ")
        except CodecError as exc:
            raise CacheError(str(exc)) from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(f"{self.path}/{SPEC_FILE}: not a store description ({type(exc).__name__}: {exc}); rebuild with `rsna preprocess --force`") from None  # fmt: skip
        self.spec_id = spec_id(self.spec, self.codec)
        if expect is not None and expect != self.spec:
            raise CacheError(
                f"{self.path} holds images made with {self.spec.describe()}; asked for {expect.describe()}"
            )
        if codec is not None and codec != self.codec:
            raise CacheError(
                f"{self.path} is stored with codec {self.codec.tag}; asked for {codec.tag}"
            )
        self.index = self._read_index()
        self.slices = self.index[["series_uid", "slice_index"]]
        self._where = dict(
            zip(
                self.index.index,
                zip(
                    *(self.index[c].to_numpy() for c in ("shard", "offset", "length")), strict=True
                ),
                strict=True,
            )
        )
        self._ok = dict(zip(self.index.index, self.index["ok"].to_numpy(), strict=True))
        self._tag = dict(zip(self.index.index, self.index["tag"].to_numpy(), strict=True))
        self._reason = self.index.loc[~self.index["ok"], "reason"].to_dict()
        self._open()

    def _read_index(self) -> pd.DataFrame:
        """index.parquet, checked: its columns and types, unique IDs; or a CacheError."""
        where = f"{self.location}/{INDEX_FILE}"
        try:
            if self.remote:
                index = pd.read_parquet(io.BytesIO(self._read_bytes(where)))
            else:
                index = pd.read_parquet(self.path / INDEX_FILE)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise CacheError(f"{where}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); rerun `rsna preprocess` to rewrite it") from None  # fmt: skip
        need = {"shard": "i", "row": "i", "offset": "i", "length": "i", "ok": "b", "tag": "u", "series_uid": "O", "slice_index": "i"}  # fmt: skip
        wrong = [c for c, kind in need.items() if c not in index.columns or index[c].dtype.kind != kind]
        if wrong or not index.index.is_unique:
            problem = f"columns {wrong} missing or of another type" if wrong else "repeated image IDs"
            raise CacheError(f"{where}: not this store's index ({problem}); rerun `rsna preprocess` to rewrite it")  # fmt: skip
        if "reason" not in index.columns:
            index["reason"] = ""
        return index

    def _stored(self) -> dict:
        if self.remote:
            try:
                stored = json.loads(self._read_bytes(f"{self.location}/{SPEC_FILE}"))
            except (OSError, ValueError) as exc:
                raise CacheError(f"{self.location}: cannot read {SPEC_FILE} ({exc})") from exc
        else:
            spec_path = self.path / SPEC_FILE
            if not spec_path.exists():
                raise CacheError(
                    f"{self.path}: no cache here (no {SPEC_FILE}); run `rsna preprocess` first"
                )
            stored = read_store_json(spec_path)
        if stored.get("format") != FORMAT_VERSION:
            raise CacheError(f"{self.path}: made by {_describe(stored)}; rebuild it with `rsna preprocess --force`")  # fmt: skip
        if not stored.get("complete"):
            raise CacheError(f"{self.path}: the store is incomplete; rerun `rsna preprocess` to finish it")  # fmt: skip
        return stored

    def _open(self) -> None:
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"ImageCache({self.location if self.remote else self.path})"

    def shard_path(self, shard: int) -> Path | str:
        """The TFRecord file of shard `shard` (a URL string for a remote store)."""
        if self.remote:
            return f"{self.location}/{_shard_path(Path(), shard).name}"
        return _shard_path(self.path, shard)

    def read_into(self, image_id: str, out: np.ndarray) -> None:
        """Decode one slice into `out` (a view into a batch).

        Raises:
            CacheError: the record is truncated or corrupted, or does not decode to this
                store's image shape; the message names the shard and the image. A slice
                that was unreadable at preprocessing is an error too, with its reason
                (callers that want zeros check :meth:`readable` first, as the generator
                does, and count it).
        """
        if self.remote:
            raise CacheError(
                f"{self.location}: a remote store is streamed (rsna.training.streaming), not "
                "read by image ID; copy it to a local disk for the DataGenerator"
            )
        shard, offset, length = self._where[self._locate(image_id)]
        path = self.shard_path(int(shard))
        if not self._ok[image_id]:  # unreadable at preprocessing: an empty record
            raise CacheError(
                f"{path}: image {image_id} was unreadable at preprocessing: "
                f"{self._reason.get(image_id) or 'no reason recorded'}"
            )
        try:
            data = read_record(self._fd(int(shard)), int(offset), int(length), path=path)
        except RecordError as exc:
            raise CacheError(f"{path}: image {image_id}: {exc}") from exc
        except OSError as exc:
            raise CacheError(
                f"{path}: image {image_id}: cannot read ({exc.strerror or exc})"
            ) from exc
        self.decode_record(image_id, data, out, path=path, offset=int(offset))

    def decode_record(
        self, image_id: str, data: bytes, out: np.ndarray, *, path: Path | str, offset: int
    ) -> None:
        """Decode `data`, the record at `offset` of shard file `path`, into `out`, once its
        tag proves it is `image_id`'s record of this store (read by image ID, or streamed).

        Raises:
            CacheError: the record is another image's, or of other store options (a stale
                or edited index), or does not decode; naming the file and the image.
        """
        if record_tag(image_id, self.spec_id, data) != self._tag[image_id]:
            raise CacheError(
                f"{path}: the record at byte {offset} is not image {image_id}'s (its tag "
                "binds another image or store options): the index is stale or edited; "
                "rerun `rsna preprocess --force`"
            )
        try:
            self.codec.decode_into(data, out)
        except CodecError as exc:
            raise CacheError(f"{path}: image {image_id}: {exc}") from exc

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = os.open(self.shard_path(shard), os.O_RDONLY)
                    self._fds[shard] = fd
        return fd
