"""Read head-CT DICOM slices: headers, stored pixels and Hounsfield units.

Every file is first walked by :mod:`rsna.data.elements` within fixed bounds (element
count, nesting depth, inflated size), so a hostile file is refused in milliseconds.
Then one of two readers decodes it:

* the fast reader, for native (uncompressed) pixel data of 8 or 16 bits in any native
  transfer syntax (implicit and explicit VR little endian, deflated, explicit VR big
  endian): the header fields come from the walk, the pixels from
  :func:`numpy.frombuffer`;
* pydicom's decoders for everything else (RLE, JPEG where a plugin is installed).

Both readers give pydicom 3's ``pixel_array`` exactly: values in native byte order,
the bits above BitsStored masked (unsigned) or sign-extended (signed) as pydicom's
``correct_unused_bits`` does, and the same refusals of short pixel data and of surplus
pixel data that holds whole extra frames. ``tests/data/test_dicom_differential.py``
checks this on every file of pydicom's own test data and on crafted files in five
encodings; ``tests/data/test_dicom_fuzz.py`` mutates files at random.

The modality transform is ``HU = stored * RescaleSlope + RescaleIntercept``
(PS3.3 C.11.1), computed in float. The known bad-intercept files of the RSNA data
(BitsStored 12, PixelRepresentation 0, RescaleIntercept > -100) are fixed on read,
see :func:`fix_bad_intercept`.

A file is read only within these bounds, or it is a :class:`DicomError` naming the
file and the reason: a DICOM Part 10 file (preamble, "DICM", a transfer syntax), one
frame, one sample per pixel, MONOCHROME1/2, Rows and Columns in
1..:data:`MAX_DIMENSION` with an aspect ratio up to :data:`MAX_ASPECT`, BitsStored
within BitsAllocated (8, 16 or 32), and a finite RescaleSlope in (0, MAX_RESCALE] and
RescaleIntercept within +-MAX_RESCALE.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rsna.data.elements import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_INFLATED_BYTES,
    NATIVE_SYNTAXES,
    NOT_DICOM,
    PIXEL_DATA,
    UNDEFINED,
    Element,
    ElementError,
    NeedMore,
    Syntax,
    Walker,
    inflate,
    read_meta,
)
from rsna.errors import RsnaError

__all__ = [
    "DEFLATED_EXPLICIT_VR_LE",
    "EXPLICIT_VR_BE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "MAX_ASPECT",
    "MAX_DEPTH",
    "MAX_DIMENSION",
    "MAX_ELEMENTS",
    "MAX_FILE_BYTES",
    "MAX_INFLATED_BYTES",
    "MAX_RESCALE",
    "NOT_AN_IMAGE",
    "NOT_DICOM",
    "DicomError",
    "DicomHeader",
    "DicomImage",
    "Reader",
    "ReaderChoice",
    "check_file",
    "correct_unused_bits",
    "fix_bad_intercept",
    "needs_intercept_fix",
    "quiet_rsna_uids",
    "read_header",
    "read_hu",
    "read_image",
    "to_hu",
]

#: Files larger than this are refused: a 512x512 16-bit slice is about 0.5 MB.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Largest Rows and Columns (0028,0010/0011); CT slices are 512.
MAX_DIMENSION = 4096
#: Largest ratio of the longer to the shorter side; a slice is padded to a square.
MAX_ASPECT = 4.0
#: Largest RescaleSlope and |RescaleIntercept| (0028,1053/1052); CT uses 1 and -1024.
MAX_RESCALE = 1e6

#: Which reader to use: the fast reader where it applies (``auto``), only the fast
#: reader (``fast``: a file it does not handle is a DicomError), or only pydicom.
ReaderChoice = Literal["auto", "fast", "pydicom"]
Reader = Literal["fast", "pydicom"]

# Bad-intercept fix, from the RSNA 2019 discussions: these files store signed
# values as 12-bit unsigned, so air (-1000 HU) wrapped to about 3096.
_FIX_OFFSET = 1000
_FIX_MODULUS = 4096
_FIX_INTERCEPT = -1000.0
_HEAD_BYTES = 4096
#: How a reason for a DICOM file that holds no single grayscale image begins.
NOT_AN_IMAGE = "not an image"


class DicomError(RsnaError):
    """A DICOM file cannot be read as a single-frame grayscale image."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class DicomHeader:
    """The header fields `rsna` uses, one value each.

    Multi-valued WindowCenter/WindowWidth keep element 0. Missing numeric fields are
    NaN (floats) or -1 (integers); missing strings are empty.
    """

    sop_instance_uid: str  # (0008,0018)
    image_type: str  # (0008,0008), values joined by "\\": LOCALIZER marks a scout
    modality: str  # (0008,0060): CT for the slices rsna predicts
    patient_id: str  # (0010,0020)
    study_uid: str  # (0020,000D)
    series_uid: str  # (0020,000E)
    instance_number: int  # (0020,0013)
    z: float  # (0020,0032) ImagePositionPatient[2]
    rows: int  # (0028,0010)
    cols: int  # (0028,0011)
    pixel_spacing: float  # (0028,0030) row spacing in mm
    samples_per_pixel: int  # (0028,0002)
    number_of_frames: int  # (0028,0008)
    photometric: str  # (0028,0004)
    bits_allocated: int  # (0028,0100)
    bits_stored: int  # (0028,0101)
    pixel_representation: int  # (0028,0103)
    window_center: float  # (0028,1050)[0]
    window_width: float  # (0028,1051)[0]
    intercept: float  # (0028,1052)
    slope: float  # (0028,1053)
    transfer_syntax: str  # (0002,0010)

    @property
    def has_bad_intercept(self) -> bool:
        """True for the files that :func:`fix_bad_intercept` must fix (an absent
        RescaleIntercept counts as 0, the identity it stands for)."""
        return needs_intercept_fix(
            bits_stored=self.bits_stored,
            pixel_representation=self.pixel_representation,
            intercept=0.0 if math.isnan(self.intercept) else self.intercept,
        )


@dataclass(frozen=True)
class DicomImage:
    """Stored pixel values with the modality transform that turns them into HU.

    `pixels` are the stored values after the bad-intercept fix, so that
    ``pixels * slope + intercept`` is HU for every file. `reader` says which reader
    decoded it: ``"fast"`` or ``"pydicom"``.
    """

    header: DicomHeader
    pixels: np.ndarray
    slope: float
    intercept: float
    intercept_fixed: bool
    reader: Reader = "fast"

    def hu(self) -> np.ndarray:
        """Hounsfield units as a float32 array."""
        return to_hu(self.pixels, slope=self.slope, intercept=self.intercept)


def needs_intercept_fix(*, bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    """Whether a file is one of the bad-intercept files.

    Args:
        bits_stored: (0028,0101) BitsStored.
        pixel_representation: (0028,0103) PixelRepresentation, 0 for unsigned.
        intercept: (0028,1052) RescaleIntercept.
    """
    return bits_stored == 12 and pixel_representation == 0 and intercept > -100


def fix_bad_intercept(pixels: np.ndarray) -> np.ndarray:
    """Unwrap the stored values of a bad-intercept file; use intercept -1000 with them.

    Adds 1000 and removes 4096 from values that reach 4096. With intercept -1000 the
    result gives the true HU. For 12-bit values (below 7192) that is ``(x + 1000) & 4095``
    in uint16, two cheap operations; any other input is fixed in int32, so nothing wraps.
    """
    import cv2

    if pixels.dtype == np.uint16 and int(pixels.max(initial=0)) + _FIX_OFFSET < 2 * _FIX_MODULUS:
        fixed = cv2.add(pixels, _FIX_OFFSET)
        return cv2.bitwise_and(fixed, _FIX_MODULUS - 1, dst=fixed)
    fixed = cv2.add(pixels, _FIX_OFFSET, dtype=cv2.CV_32S)
    wrapped = cv2.compare(fixed, _FIX_MODULUS, cv2.CMP_GE)
    return cv2.subtract(fixed, _FIX_MODULUS, dst=fixed, mask=wrapped)


def to_hu(pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Apply the modality rescale (PS3.3 C.11.1.1.2) in float32: never wraps."""
    hu = pixels.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    return hu


def correct_unused_bits(pixels: np.ndarray, *, bits_stored: int) -> np.ndarray:
    """Mask (unsigned) or sign-extend (signed) the bits above BitsStored (0028,0101).

    PS3.5 8.1.1: the bits above BitsStored carry no meaning. pydicom 3 shifts them out
    for native pixel data; so does this, and it returns `pixels` itself when every
    value already lies in the BitsStored range (the usual case), without a copy.
    """
    bits = pixels.dtype.itemsize * 8
    if not 0 < bits_stored < bits:
        return pixels
    signed = pixels.dtype.kind == "i"
    low = -(1 << (bits_stored - 1)) if signed else 0
    high = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    if pixels.size == 0 or (low <= pixels.min() and pixels.max() <= high):
        return pixels
    shift = bits - bits_stored
    out = np.left_shift(pixels, shift)
    return np.right_shift(out, shift, out=out)


def read_header(path: str | os.PathLike[str], *, reader: ReaderChoice = "auto") -> DicomHeader:
    """Read the header fields of a DICOM file without decoding its pixels.

    Raises:
        DicomError: the file is not a readable DICOM file, or its header is out of
            bounds (see the module docstring).
    """
    return _parse(Path(path), with_pixels=False, reader=reader).header


def read_image(
    path: str | os.PathLike[str],
    *,
    buffer: bytearray | None = None,
    fix_intercept: bool = True,
    reader: ReaderChoice = "auto",
) -> DicomImage:
    """Read a slice's stored pixels and modality transform, fixing a bad intercept.

    Args:
        path: the DICOM file.
        buffer: optional scratch to read the file into, for loops over many files (no
            fresh allocation, so no page faults). The returned pixels may then share
            its memory: they are valid until the buffer is used again. A file larger
            than the buffer is read into fresh memory.
        fix_intercept: fix bad-intercept files (False shows them as stored, broken).
        reader: ``auto`` (the fast reader where it applies, else pydicom), ``fast`` or
            ``pydicom``, to compare the two.

    Raises:
        DicomError: unreadable, truncated, non-image, multi-frame, colour, out of
            bounds or unsupported files (or, with ``reader="fast"``, files the fast
            reader does not handle).
    """
    path = Path(path)
    parsed = _parse(path, with_pixels=True, buffer=buffer, reader=reader)
    header = parsed.header
    pixels = parsed.decode(path)
    slope = 1.0 if math.isnan(header.slope) else header.slope
    intercept = 0.0 if math.isnan(header.intercept) else header.intercept
    fixed = fix_intercept and header.has_bad_intercept
    if fixed:
        pixels, intercept = fix_bad_intercept(pixels), _FIX_INTERCEPT
    return DicomImage(header, pixels, slope, intercept, fixed, parsed.reader)


def read_hu(
    path: str | os.PathLike[str], *, fix_intercept: bool = True, reader: ReaderChoice = "auto"
) -> np.ndarray:
    """Read a slice as a float32 2-D array of Hounsfield units.

    Raises:
        DicomError: see :func:`read_image`.
    """
    return read_image(path, fix_intercept=fix_intercept, reader=reader).hu()


def check_file(path: str | os.PathLike[str]) -> tuple[DicomHeader | None, str]:
    """Header and readability of a file, for scanning a whole data set.

    Returns the header (None if even the header is unreadable) and the reason the
    pixels cannot be read ("" if they can). Native pixel data is checked by its length
    without decoding; compressed pixel data is decoded in full.
    """
    path = Path(path)
    try:
        parsed = _parse(path, with_pixels=False)
    except DicomError as exc:
        return None, exc.reason
    if parsed.pixel_error or parsed.reader == "fast":
        return parsed.header, parsed.pixel_error
    try:
        _parse(path, with_pixels=True).decode(path)
    except DicomError as exc:
        return parsed.header, exc.reason
    return parsed.header, ""


@contextlib.contextmanager
def quiet_rsna_uids() -> Iterator[None]:
    """Silence pydicom's complaint about the RSNA "ID_<hex>" UIDs, and nothing else.

    DICOM UIDs are dotted digits (PS3.5 9.1); the RSNA files use "ID_<hex>" instead.
    That is how the data is, so it is not worth a warning per file.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Invalid value for VR UI: 'ID_[0-9a-f]+'")
        yield


# --------------------------------------------------------------------------- parsing

#: The header fields, by tag: (name, how to read the value, VR in the DICOM dictionary).
_TAG_FIELDS: dict[int, tuple[str, str, bytes]] = {
    0x00080008: ("image_type", "str", b"CS"),
    0x00080018: ("sop_instance_uid", "str", b"UI"),
    0x00080060: ("modality", "str", b"CS"),
    0x00100020: ("patient_id", "str", b"LO"),
    0x0020000D: ("study_uid", "str", b"UI"),
    0x0020000E: ("series_uid", "str", b"UI"),
    0x00200013: ("instance_number", "int", b"IS"),
    0x00200032: ("z", "z", b"DS"),
    0x00280002: ("samples_per_pixel", "us", b"US"),
    0x00280004: ("photometric", "str", b"CS"),
    0x00280008: ("number_of_frames", "int", b"IS"),
    0x00280010: ("rows", "us", b"US"),
    0x00280011: ("cols", "us", b"US"),
    0x00280030: ("pixel_spacing", "float", b"DS"),
    0x00280100: ("bits_allocated", "us", b"US"),
    0x00280101: ("bits_stored", "us", b"US"),
    0x00280103: ("pixel_representation", "us", b"US"),
    0x00281050: ("window_center", "float", b"DS"),
    0x00281051: ("window_width", "float", b"DS"),
    0x00281052: ("intercept", "rescale", b"DS"),
    0x00281053: ("slope", "rescale", b"DS"),
}
_DEFAULTS: dict[str, object] = {
    "sop_instance_uid": "",
    "image_type": "",
    "modality": "",
    "patient_id": "",
    "study_uid": "",
    "series_uid": "",
    "instance_number": -1,
    "z": math.nan,
    "rows": -1,
    "cols": -1,
    "pixel_spacing": math.nan,
    "samples_per_pixel": -1,
    "number_of_frames": 1,
    "photometric": "",
    "bits_allocated": -1,
    "bits_stored": -1,
    "pixel_representation": -1,
    "window_center": math.nan,
    "window_width": math.nan,
    "intercept": math.nan,
    "slope": math.nan,
    "transfer_syntax": "",
}
#: (0028,xxxx) elements pydicom needs to decode pixel data (its DecodeRunner).
_REQUIRED = {
    "rows": "(0028,0010) Rows",
    "cols": "(0028,0011) Columns",
    "samples_per_pixel": "(0028,0002) SamplesPerPixel",
    "photometric": "(0028,0004) PhotometricInterpretation",
    "bits_allocated": "(0028,0100) BitsAllocated",
    "bits_stored": "(0028,0101) BitsStored",
    "pixel_representation": "(0028,0103) PixelRepresentation",
}
_INT32 = (-(2**31), 2**31 - 1)  # the range of an IS value, PS3.5 table 6.2-1


@dataclass(frozen=True)
class _Parsed:
    """A walked file: its header, and how to decode its pixels."""

    header: DicomHeader
    reader: Reader
    pixel_error: str = ""  # header-only read: what is wrong with the pixels
    data: bytes | memoryview | None = None  # fast: the dataset holding the pixels
    pixels: Element | None = None  # fast: the pixel data element
    syntax: Syntax | None = None  # fast: its encoding
    dataset: object | None = None  # pydicom: the Dataset

    def decode(self, path: Path) -> np.ndarray:
        """The stored values as a 2-D array in native byte order, as pydicom gives them."""
        if self.pixel_error:
            raise DicomError(path, self.pixel_error)
        if self.reader == "pydicom":
            return _decode_pydicom(path, self.dataset, self.header)
        h, element = self.header, self.pixels
        dtype = np.dtype(
            f"{self.syntax.order}{'i' if h.pixel_representation else 'u'}{h.bits_allocated // 8}"
        )
        arr = np.frombuffer(self.data, dtype, count=h.rows * h.cols, offset=element.offset)
        arr = arr.reshape(h.rows, h.cols)
        if not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        return correct_unused_bits(arr, bits_stored=h.bits_stored)


def _open_regular(path: Path):
    """`path` opened for reading if it is a regular file (a symlink to one included).

    Opened without blocking, so a FIFO or a device named like a slice is refused at once
    instead of waiting forever for a writer.

    Raises:
        DicomError: not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
        raise DicomError(path, f"not a regular file ({kind})")
    return os.fdopen(fd, "rb")


def _parse(
    path: Path,
    *,
    with_pixels: bool,
    buffer: bytearray | None = None,
    reader: ReaderChoice = "auto",
) -> _Parsed:
    """Read, walk and check a file; decide which reader decodes it."""
    if reader not in ("auto", "fast", "pydicom"):
        raise DicomError(
            path, f"`reader` must be auto, fast or pydicom. Received: reader={reader!r}"
        )
    try:
        with _open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise DicomError(
                    path, f"file is {size} bytes, more than MAX_FILE_BYTES={MAX_FILE_BYTES}"
                )
            if with_pixels and buffer is not None and len(buffer) >= size:
                data = memoryview(buffer)[: fh.readinto(memoryview(buffer)[:size])]
            else:
                data = fh.read() if with_pixels else fh.read(_HEAD_BYTES)
            while True:
                try:
                    return _parse_data(path, data, size, with_pixels=with_pixels, reader=reader)
                except NeedMore:
                    if len(data) >= size:
                        raise DicomError(path, _too_short(data)) from None
                    data = bytes(data) + fh.read(max(len(data), _HEAD_BYTES))
    except OSError as exc:
        raise DicomError(path, f"cannot read file ({exc.strerror or exc})") from exc
    except ElementError as exc:
        raise DicomError(path, f"cannot parse DICOM: {exc}") from exc


def _parse_data(
    path: Path, data: bytes | memoryview, size: int, *, with_pixels: bool, reader: ReaderChoice
) -> _Parsed:
    complete = len(data) >= size
    ts, start = read_meta(data)
    syntax = NATIVE_SYNTAXES.get(ts) or _encapsulated(path, ts)
    dataset, end = data, size  # where the dataset's bytes are, and where the file ends
    if ts == DEFLATED_EXPLICIT_VR_LE:
        if not complete:
            raise NeedMore
        dataset, start = inflate(data[start:]), 0
        end, complete = len(dataset), True
    walker = Walker(dataset, syntax, complete=complete)
    fields: dict[str, object] = {"transfer_syntax": ts}
    pixels = None
    elements = walker.elements(start, len(dataset) if complete else end)
    for element in elements:
        if element.tag == PIXEL_DATA:
            if element.vr not in (b"", b"OB", b"OW", b"UN"):
                raise DicomError(
                    path,
                    f"(7FE0,0010) PixelData has VR {element.vr.decode('latin-1')!r}; it must be OB or OW",
                )
            pixels = element
            break
        spec = _TAG_FIELDS.get(element.tag)
        if spec is not None:
            name, kind, vr = spec
            if element.vr not in (b"", vr, b"UN"):  # pydicom would read it as that VR
                raise DicomError(
                    path,
                    f"`{name}` has VR {element.vr.decode('latin-1')!r}; the DICOM dictionary says {vr.decode()}",
                )
            raw = bytes(dataset[element.offset : element.end])
            fields[name] = _value(raw, kind, path, name, little=syntax.little)
    header = _make_header(fields)
    _check_header(path, header)
    fast = not syntax.encapsulated and header.bits_allocated in (8, 16) and reader != "pydicom"
    if reader == "fast" and not fast:
        raise DicomError(
            path,
            f"the fast reader does not handle this file (transfer syntax {ts}, BitsAllocated {header.bits_allocated})",
        )
    if fast:
        error = _pixel_error(header, pixels, available=end - (pixels.offset if pixels else end))
        if with_pixels and error:
            raise DicomError(path, error)
        return _Parsed(header, "fast", error, dataset, pixels, syntax)
    if not complete:
        raise NeedMore  # pydicom reads the whole file: walk all of it first
    for element in elements:  # the rest of the file, within the bounds
        if element.tag == PIXEL_DATA:
            pixels = element
    if pixels is None:
        raise DicomError(path, f"{NOT_AN_IMAGE}: no (7FE0,0010) PixelData element")
    return _parse_pydicom(path, data, header, with_pixels=with_pixels)


def _too_short(data: bytes | memoryview) -> str:
    if len(data) == 0:
        return f"{NOT_DICOM}: empty"
    if len(data) < 132:
        return f"{NOT_DICOM}: {len(data)} bytes, shorter than the 132-byte preamble and 'DICM'"
    return "cannot parse DICOM: the file ends inside its file meta information or a data element"


def _encapsulated(path: Path, ts: str) -> Syntax:
    """Explicit VR little endian with compressed pixel data, for a transfer syntax pydicom knows."""
    from pydicom.uid import UID

    uid = UID(ts)
    if not (uid.is_transfer_syntax and uid.is_encapsulated):
        raise DicomError(path, f"unsupported transfer syntax (0002,0010) {ts!r}")
    return Syntax(explicit=True, little=True, encapsulated=True)


def _value(raw: bytes, kind: str, path: Path, name: str, *, little: bool = True) -> object:
    """Decode one element value: US, IS (a 32-bit integer), DS (``rescale``: finite too)
    or text; element 0 of a multi-valued element (ImagePositionPatient: element 2)."""
    if kind == "us":
        if len(raw) < 2:
            raise DicomError(path, f"`{name}` has {len(raw)} bytes, expected 2 (VR US)")
        return int.from_bytes(raw[:2], "little" if little else "big")
    text = raw.decode("latin-1").strip("\x00 ")
    if kind == "str":
        return text
    parts = [p.strip() for p in text.split("\\")]
    if kind == "rescale" and len(parts) > 1:  # VM 1 (PS3.3 C.11.1); a list is no transform
        raise DicomError(path, f"`{name}` must be one number. Received: {text!r}")
    part = (parts[2] if len(parts) == 3 else "") if kind == "z" else parts[0]
    if not part:
        return -1 if kind == "int" else math.nan
    try:
        number = float(part)
    except ValueError as exc:
        raise DicomError(path, f"`{name}` is not a number. Received: {text!r}") from exc
    if kind == "rescale" and not math.isfinite(number):
        raise DicomError(path, f"`{name}` must be finite. Received: {text!r}")
    if kind != "int":
        return number
    if not (number.is_integer() and _INT32[0] <= number <= _INT32[1]):
        raise DicomError(
            path, f"`{name}` must be an integer in the IS range [-2**31, 2**31). Received: {text!r}"
        )
    return int(number)


def _make_header(fields: dict[str, object]) -> DicomHeader:
    return DicomHeader(**{**_DEFAULTS, **fields})  # type: ignore[arg-type]


def _check_header(path: Path, h: DicomHeader) -> None:
    """Refuse what is not a single-frame grayscale image within the bounds."""
    missing = [tag for name, tag in _REQUIRED.items() if getattr(h, name) in (-1, "")]
    if missing:
        raise DicomError(path, f"{NOT_AN_IMAGE}: missing {', '.join(missing)}")
    if not (0 < h.rows <= MAX_DIMENSION and 0 < h.cols <= MAX_DIMENSION):
        raise DicomError(
            path,
            f"Rows and Columns (0028,0010/0011) must be in 1..MAX_DIMENSION={MAX_DIMENSION}. "
            f"Received: {h.rows}x{h.cols}",
        )
    if max(h.rows, h.cols) > MAX_ASPECT * min(h.rows, h.cols):
        raise DicomError(path, f"aspect ratio {h.rows}x{h.cols} is over MAX_ASPECT={MAX_ASPECT:g}")
    if h.samples_per_pixel != 1:
        raise DicomError(path, f"not grayscale: SamplesPerPixel={h.samples_per_pixel} (0028,0002)")
    if h.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            path, f"not grayscale: PhotometricInterpretation={h.photometric!r} (0028,0004)"
        )
    if h.number_of_frames != 1:
        raise DicomError(
            path,
            f"multi-frame files are not supported: NumberOfFrames={h.number_of_frames} (0028,0008)",
        )
    if h.pixel_representation not in (0, 1):
        raise DicomError(
            path,
            f"PixelRepresentation (0028,0103) must be 0 or 1. Received: {h.pixel_representation}",
        )
    if h.bits_allocated not in (8, 16, 32) or not 0 < h.bits_stored <= h.bits_allocated:
        raise DicomError(
            path,
            f"BitsAllocated (0028,0100) must be 8, 16 or 32 and BitsStored (0028,0101) in "
            f"1..BitsAllocated. Received: {h.bits_allocated} and {h.bits_stored}",
        )
    for name, tag, value, ok in (
        ("RescaleSlope", "(0028,1053)", h.slope, 0 < h.slope <= MAX_RESCALE),
        ("RescaleIntercept", "(0028,1052)", h.intercept, abs(h.intercept) <= MAX_RESCALE),
    ):
        if not (math.isnan(value) or ok):
            raise DicomError(
                path,
                f"{name} {tag} must be finite and within MAX_RESCALE={MAX_RESCALE:g} (slope > 0). Received: {value!r}",
            )


def _pixel_error(h: DicomHeader, element: Element | None, *, available: int) -> str:
    """What is wrong with native pixel data, as pydicom judges it ("" if nothing)."""
    if element is None:
        return f"{NOT_AN_IMAGE}: no (7FE0,0010) PixelData element"
    if element.length == UNDEFINED:
        return "pixel data of undefined length in a native transfer syntax"
    expected = h.rows * h.cols * h.bits_allocated // 8
    padded = expected + expected % 2
    if element.length < expected:
        return f"short pixel data: (7FE0,0010) holds {element.length} bytes, expected {expected}"
    if element.length > padded and element.length // expected > 1:
        return (
            f"pixel data holds {element.length // expected} whole frames; "
            "NumberOfFrames (0028,0008) is 1"
        )
    if available < expected:
        return f"truncated pixel data: expected {expected} bytes, found {max(available, 0)}"
    return ""


def _parse_pydicom(
    path: Path, data: bytes | memoryview, header: DicomHeader, *, with_pixels: bool
) -> _Parsed:
    """pydicom's reader, for a file already walked within the bounds."""
    import pydicom

    try:
        with quiet_rsna_uids():
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not with_pixels)
            fields = _pydicom_fields(ds, path)
    except DicomError:
        raise
    except RecursionError as exc:
        raise DicomError(path, "sequences nested too deeply to parse") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad bytes
        raise DicomError(path, f"cannot parse DICOM ({type(exc).__name__}: {exc})") from exc
    parsed = _make_header(fields)
    _check_header(path, parsed)
    return _Parsed(parsed, "pydicom", dataset=ds)


def _decode_pydicom(path: Path, ds: object, header: DicomHeader) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on padding; the checks below decide
            arr = ds.pixel_array  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types
        raise DicomError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2 or arr.shape != (header.rows, header.cols):
        raise DicomError(
            path,
            f"decoded pixel array has shape {arr.shape}, expected ({header.rows}, {header.cols})",
        )
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _pydicom_fields(ds: object, path: Path) -> dict[str, object]:
    """Header fields from a pydicom Dataset, decoded like the fast reader decodes them.

    Text elements are decoded from their raw bytes, which also spares pydicom's value
    validation (the RSNA files use "ID_<hex>" UIDs, which DICOM does not allow).
    """
    fields: dict[str, object] = {}
    meta = getattr(ds, "file_meta", None)
    ts = meta.get_item(0x00020010) if meta is not None else None
    if ts is not None:
        fields["transfer_syntax"] = _text(ts.value)
    for tag, (name, kind, _) in _TAG_FIELDS.items():
        if tag not in ds:  # type: ignore[operator]
            continue
        if kind == "us":
            value = ds[tag].value  # type: ignore[index]
            if value is not None and value != b"":
                fields[name] = int(list(value)[0] if _is_multi(value) else value)
            continue
        value = ds.get_item(tag).value  # type: ignore[attr-defined]
        fields[name] = _value(
            value if isinstance(value, bytes) else _text(value).encode(), kind, path, name
        )
    return fields


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ")
    if _is_multi(value):
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return "" if value is None else str(value)


def _is_multi(value: object) -> bool:
    return not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__len__")
