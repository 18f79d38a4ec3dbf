"""Where windowed images come from, behind one interface.

* :class:`~rsna.data.cache.ImageCache`: a store made by ``rsna preprocess`` (fastest);
* :class:`DicomImages`: the DICOM files of a work folder made by ``rsna prepare``;
* :class:`DicomFolder`: a plain folder of ``<image ID>.dcm`` files, nothing prepared;
* :class:`ArrayImages`: windowed images already in memory (a small folder read once);
* :class:`DicomFiles`: DICOM files anywhere, by image ID (a folder of studies scanned by
  :func:`rsna.data.studies.scan_studies`).

Each gives ``read_into(image_id, out)``, ``readable(image_id)``, ``reason(image_id)``
and ``slices`` (series and slice index per image, for context channels), so
:class:`~rsna.training.generator.DataGenerator` takes any of them. An
:class:`ImageSpec` says what the images are: size, windows, curve and crop.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna.data.crop import Crop
from rsna.data.labels import check_image_id
from rsna.data.metadata import data_dir, read_metadata, scan_file
from rsna.data.series import slice_order
from rsna.data.windowing import DEFAULT_WINDOWS, Curve, Preprocessor, Window, window_name
from rsna.errors import DataWarning, RsnaError
from rsna.parallel import parallel_map

__all__ = [
    "ArrayImages",
    "DicomFiles",
    "DicomFolder",
    "DicomImages",
    "ImageSource",
    "ImageSpec",
    "SourceError",
]


class SourceError(RsnaError):
    """An image is not in a source, or a source cannot be opened."""


@dataclass(frozen=True)
class ImageSpec:
    """What the images are: every slice preprocessed with these options."""

    size: int = 256
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    curve: Curve = "linear"
    crop: Crop = "none"  # "head": cut to the head's square before resizing (rsna.data.crop)

    def __post_init__(self) -> None:
        """Check the options as :class:`~rsna.data.windowing.Preprocessor` would, before
        anything is written."""
        self.preprocessor(reuse_buffers=False)

    @property
    def channels(self) -> int:
        return len(self.windows)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    @property
    def name(self) -> str:
        """A folder name that tells specs apart, e.g. ``256_brain-subdural-soft``."""
        names = "-".join(window_name(w).replace("/", "_") for w in self.windows)
        suffix = "" if self.curve == "linear" else f"_{self.curve}"
        suffix += "" if self.crop == "none" else f"_{self.crop}"
        return f"{self.size}_{names}{suffix}"

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "windows": [{"center": w.center, "width": w.width} for w in self.windows],
            "curve": self.curve,
            "crop": self.crop,
        }

    @classmethod
    def from_json(cls, data: dict) -> ImageSpec:
        windows = tuple(Window(center=w["center"], width=w["width"]) for w in data["windows"])
        # Stores written before the head crop existed hold full slices.
        crop = data.get("crop", "none")
        return cls(size=int(data["size"]), windows=windows, curve=data["curve"], crop=crop)

    def describe(self) -> str:
        names = ",".join(window_name(w) for w in self.windows)
        return f"size={self.size}, windows={names}, curve={self.curve}, crop={self.crop}"

    def preprocessor(self, *, reuse_buffers: bool = True) -> Preprocessor:
        return Preprocessor(
            windows=self.windows,
            size=self.size,
            curve=self.curve,
            crop=self.crop,
            reuse_buffers=reuse_buffers,
        )


class ImageSource:
    """What the generator needs of a source: membership, readability, and images.

    Subclasses set ``spec``, ``slices`` (``series_uid`` and ``slice_index`` per image),
    ``_ok`` (image_id -> readable) and ``_reason`` (image_id -> why not), and implement
    :meth:`read_into`, and :meth:`_open` for what each process must open for itself
    (file descriptors, locks, thread-locals): those are dropped when the source is
    pickled and made anew where it lands.
    """

    spec: ImageSpec
    slices: pd.DataFrame
    _ok: dict
    _reason: dict
    _per_process: tuple[str, ...] = ()
    #: The error this source raises for an image it does not hold.
    error: type[RsnaError] = SourceError

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
        return self.spec.shape

    def readable(self, image_id: str) -> bool:
        """False for slices known to be unreadable (flagged by prepare, or in a store)."""
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
            raise self.error(f"{self}: image {image_id!r} is not here")
        return image_id


class _Dicoms(ImageSource):
    """DICOM files preprocessed on read, with one Preprocessor per thread."""

    _path: dict[str, str]
    _per_process = ("_local",)

    def _open(self) -> None:
        self._local = threading.local()

    def read(self, image_id: str) -> np.ndarray:
        """The uint8 (size, size, channels) image of one slice.

        Raises:
            rsna.data.dicom.DicomError: the file cannot be read.
        """
        preprocessor = getattr(self._local, "preprocessor", None)
        if preprocessor is None:
            preprocessor = self.spec.preprocessor()
            self._local.preprocessor = preprocessor
        return preprocessor(self._path[self._locate(image_id)])

    def read_into(self, image_id: str, out: np.ndarray) -> None:
        """Preprocess one slice into `out` (a view into a batch)."""
        np.copyto(out, self.read(image_id))


class DicomImages(_Dicoms):
    """Read windowed images straight from the DICOM files of a prepared work folder."""

    def __init__(self, work_dir: str | os.PathLike[str], spec: ImageSpec = ImageSpec()) -> None:
        self.spec = spec
        meta = read_metadata(work_dir)
        base = data_dir(work_dir)
        self.slices = meta[["series_uid", "slice_index"]]
        self._path = {i: str(base / f) for i, f in zip(meta.index, meta["file"], strict=True)}
        self._ok = dict(zip(meta.index, meta["readable"].to_numpy(), strict=True))
        self._reason = meta.loc[~meta["readable"], "reason"].to_dict()
        self._open()

    def __repr__(self) -> str:
        return f"DicomImages({len(self._path)} slices)"


class DicomFiles(_Dicoms):
    """Read windowed images from DICOM files given by image ID, anywhere on disk.

    Args:
        paths: image ID -> its file.
        slices: ``series_uid`` and ``slice_index`` of every image in `paths` (for context
            slices), indexed by image ID.
        spec: what the images are.

    Raises:
        SourceError: `slices` does not cover `paths`.
    """

    def __init__(
        self, paths: dict[str, str], slices: pd.DataFrame, spec: ImageSpec = ImageSpec()
    ) -> None:
        missing = sorted(set(paths) - set(slices.index))
        if missing:
            raise SourceError(
                f"`slices` lacks {len(missing)} images of `paths`, e.g. {missing[:3]}"
            )
        self.spec, self._path = spec, dict(paths)
        self.slices = slices.loc[list(paths), ["series_uid", "slice_index"]]
        self._ok, self._reason = dict.fromkeys(paths, True), {}
        self._open()

    def __repr__(self) -> str:
        return f"DicomFiles({len(self._path)} files)"


class ArrayImages(ImageSource):
    """Windowed images held in memory: row k of `images` is `image_ids[k]`.

    Args:
        images: uint8 (n, size, size, windows), as `spec` says.
        image_ids: the images' IDs, in row order.
        slices: ``series_uid`` and ``slice_index`` of each image, indexed by image ID.
        spec: what the images are.
        unreadable: image ID -> why it could not be read (its row is ignored).

    Raises:
        SourceError: `images` does not have one row of `spec`'s shape per image ID.
    """

    def __init__(
        self,
        images: np.ndarray,
        image_ids: list[str],
        slices: pd.DataFrame,
        spec: ImageSpec,
        *,
        unreadable: dict[str, str] | None = None,
    ) -> None:
        if images.shape != (len(image_ids), *spec.shape) or images.dtype != np.uint8:
            raise SourceError(
                f"`images` must be uint8 of shape {(len(image_ids), *spec.shape)}. "
                f"Received: {images.dtype} {images.shape}"
            )
        self.spec, self._images = spec, images
        self._row = {image_id: k for k, image_id in enumerate(image_ids)}
        self.slices = slices.loc[list(image_ids), ["series_uid", "slice_index"]]
        self._reason = dict(unreadable or {})
        self._ok = {i: i not in self._reason for i in image_ids}

    def read_into(self, image_id: str, out: np.ndarray) -> None:
        np.copyto(out, self._images[self._row[self._locate(image_id)]])

    def __repr__(self) -> str:
        return f"ArrayImages({len(self._row)} images)"


def _read_chunk(job: tuple[list[str], ImageSpec]) -> tuple[np.ndarray, dict[int, str]]:
    """Window the files of one chunk: the images, and row -> why it failed (zeros)."""
    paths, spec = job
    preprocessor = spec.preprocessor()
    out = np.zeros((len(paths), *spec.shape), np.uint8)
    failed = {}
    for k, path in enumerate(paths):
        try:
            out[k] = preprocessor(path)
        except RsnaError as exc:
            failed[k] = str(exc)
    return out, failed


def read_windowed(
    paths: list[str], spec: ImageSpec, *, workers: int | None = None, chunk: int = 64
) -> tuple[np.ndarray, dict[int, str]]:
    """Every file of `paths` windowed as `spec` says, on all cores with a progress bar:
    uint8 (n, size, size, windows), and row -> the reason for each file that could not be
    read (its row is zeros)."""
    jobs = [(paths[k : k + chunk], spec) for k in range(0, len(paths), chunk)]
    images, failed = [], {}
    for n, (part, bad) in enumerate(
        parallel_map(_read_chunk, jobs, workers=workers, desc="read slices", unit="chunk")
    ):
        images.append(part)
        failed.update({n * chunk + k: reason for k, reason in bad.items()})
    empty = np.zeros((0, *spec.shape), np.uint8)
    return (np.concatenate(images) if images else empty), failed


def _slice_files(folder: Path) -> tuple[list[str], list[str]]:
    """The ``<image ID>.dcm`` regular files of `folder` (sorted), and the other ``.dcm``
    entries: names that are no image ID (``notes.dcm``, ``ID_ABC.dcm``, macOS's
    ``._ID_abc.dcm``), folders, FIFOs and devices. A symlink to a regular file counts."""
    names, ignored = [], []
    for entry in os.scandir(folder):
        if not entry.name.endswith(".dcm"):
            continue
        try:
            check_image_id(entry.name[:-4])
            regular = entry.is_file()  # follows links; False for FIFOs, devices, folders
        except (RsnaError, OSError):
            regular = False
        (names if regular else ignored).append(entry.name)
    return sorted(names), ignored


class DicomFolder(_Dicoms):
    """Read windowed images from a plain folder of ``<image ID>.dcm`` files.

    Nothing needs to be prepared. With `scan_headers` (needed for context slices), the
    headers of every file in the folder are read once, on all cores with a progress
    bar, for each slice's series and z; nothing is written. Without it, every image is
    its own series, and a file that cannot be read is found when it is read.

    Entries that are not regular ``<image ID>.dcm`` files (a stray ``notes.dcm``,
    macOS's ``._`` files, a FIFO) are ignored with a warning and listed in ``ignored``;
    asking for one of them is an error like any image that is not there.

    Raises:
        SourceError: the folder does not exist or holds no DICOM files.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        spec: ImageSpec = ImageSpec(),
        *,
        scan_headers: bool = False,
        workers: int | None = None,
    ) -> None:
        self.spec, self.image_dir = spec, Path(image_dir)
        if not self.image_dir.is_dir():
            raise SourceError(
                f"`image_dir` must be a folder. Received: image_dir={str(image_dir)!r}"
            )
        names, ignored = _slice_files(self.image_dir)
        if ignored:
            warnings.warn(
                f"{self.image_dir}: ignored {len(ignored)} entries that are not regular "
                f"<image ID>.dcm files, e.g. {sorted(ignored)[:5]}",
                DataWarning,
                stacklevel=3,
            )
        self.ignored = tuple(sorted(ignored))
        ids = [name[:-4] for name in names]
        if not ids:
            raise SourceError(f"{self.image_dir}: no <image ID>.dcm files")
        self._path = {i: str(self.image_dir / n) for i, n in zip(ids, names, strict=True)}
        self._ok, self._reason = dict.fromkeys(ids, True), {}
        self.slices = pd.DataFrame(
            {"series_uid": "", "slice_index": -1}, index=pd.Index(ids, name="image_id")
        )
        if scan_headers:
            self._scan(names, workers=workers)
        self._open()

    def _scan(self, names: list[str], *, workers: int | None) -> None:
        jobs = [(str(self.image_dir), name, "") for name in names]
        rows = pd.DataFrame(
            list(parallel_map(scan_file, jobs, workers=workers, desc="read headers"))
        )
        rows = rows.set_index("image_id")
        for column, fill in (("series_uid", ""), ("z", np.nan), ("instance_number", -1)):
            rows[column] = rows.get(column, fill)
            rows[column] = rows[column].fillna(fill)
        self.slices = pd.DataFrame(
            {
                "series_uid": rows["series_uid"].astype(str),
                "slice_index": slice_order(rows)["slice_index"],
            }
        )
        bad = rows.index[~rows["readable"].astype(bool)]
        for image_id in bad:
            self._ok[image_id] = False
            self._reason[image_id] = str(rows.at[image_id, "reason"])

    def __repr__(self) -> str:
        return f"DicomFolder({self.image_dir}, {len(self._path)} files)"
