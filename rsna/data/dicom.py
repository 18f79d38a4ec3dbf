"""Read head-CT DICOM slices: headers, stored pixels and Hounsfield units.

Two readers share one contract:

* a fast path for the common case, uncompressed little-endian files with 16-bit
  pixels and no undefined-length sequences, which walks the data elements with
  :mod:`struct` and maps the pixel data with :func:`numpy.frombuffer`;
* pydicom's general reader and decoders for everything else (big-endian, deflated,
  RLE, JPEG where a plugin is installed, sequences of undefined length).

Both give the stored values exactly as ``pydicom``'s ``pixel_array`` does (no
masking of unused high bits, the default of pydicom 3). Every failure becomes a
:class:`DicomError` that names the file and the reason.

The modality transform is ``HU = stored * RescaleSlope + RescaleIntercept``
(PS3.3 C.11.1), computed in float. The known bad-intercept files of the RSNA data
(BitsStored 12, PixelRepresentation 0, RescaleIntercept > -100) are fixed on read,
see :func:`fix_bad_intercept`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rsna.errors import RsnaError

__all__ = [
    "DEFLATED_EXPLICIT_VR_LE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "MAX_FILE_BYTES",
    "MAX_INFLATED_BYTES",
    "DicomError",
    "DicomHeader",
    "DicomImage",
    "Reader",
    "ReaderChoice",
    "check_file",
    "fix_bad_intercept",
    "needs_intercept_fix",
    "quiet_rsna_uids",
    "read_header",
    "read_hu",
    "read_image",
    "to_hu",
]

#: Files larger than this are refused: a head-CT slice is about 0.5 MB.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: A deflated dataset may not inflate past this (a small file can inflate to GBs).
MAX_INFLATED_BYTES = 256 * 1024 * 1024

#: Which reader to use: the fast path where it applies (``auto``), only the fast path
#: (``fast``: a file it declines is a DicomError), or only pydicom (``pydicom``).
ReaderChoice = Literal["auto", "fast", "pydicom"]
Reader = Literal["fast", "pydicom"]

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"

# Bad-intercept fix, from the RSNA 2019 discussions: these files store signed
# values as 12-bit unsigned, so air (-1000 HU) wrapped to about 3096.
_FIX_OFFSET = 1000
_FIX_MODULUS = 4096
_FIX_INTERCEPT = -1000.0


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
        """True for the files that :func:`fix_bad_intercept` must fix."""
        return needs_intercept_fix(
            bits_stored=self.bits_stored,
            pixel_representation=self.pixel_representation,
            intercept=self.intercept,
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


def read_header(path: str | os.PathLike[str], *, reader: ReaderChoice = "auto") -> DicomHeader:
    """Read the header fields of a DICOM file without decoding its pixels.

    Raises:
        DicomError: the file is not a readable DICOM file.
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
        reader: ``auto`` (the fast path where it applies, else pydicom), ``fast`` or
            ``pydicom``, to compare the two.

    Raises:
        DicomError: unreadable, truncated, non-image, multi-frame, colour or
            unsupported files (or, with ``reader="fast"``, files the fast path declines).
    """
    path = Path(path)
    parsed = _parse(path, with_pixels=True, buffer=buffer, reader=reader)
    header = parsed.header
    pixels = _decode(path, parsed)
    slope = 1.0 if math.isnan(header.slope) else header.slope
    intercept = 0.0 if math.isnan(header.intercept) else header.intercept
    fixed = fix_intercept and header.has_bad_intercept
    if fixed:
        pixels, intercept = fix_bad_intercept(pixels), _FIX_INTERCEPT
    used: Reader = "fast" if parsed.pixel_data is not None else "pydicom"
    return DicomImage(header, pixels, slope, intercept, fixed, used)


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
    pixels cannot be read ("" if they can). The fast path checks the pixel data
    length without decoding; other files are decoded in full.
    """
    path = Path(path)
    try:
        parsed = _parse(path, with_pixels=False)
    except DicomError as exc:
        return None, exc.reason
    if parsed.pixel_error or parsed.dataset is None:
        return parsed.header, parsed.pixel_error
    try:
        _decode(path, _parse(path, with_pixels=True))
    except DicomError as exc:
        return parsed.header, exc.reason
    return parsed.header, ""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Parsed:
    header: DicomHeader
    pixel_data: bytes | memoryview | None = None  # fast path
    dataset: object | None = None  # pydicom fallback
    pixel_error: str = ""  # fast path, header-only read: what is wrong with the pixels


class _NotFast(Exception):
    """The fast path does not handle this file; use pydicom."""


class _NeedMore(Exception):
    """The header continues past the bytes read so far."""


_TAG_FIELDS: dict[int, tuple[str, str]] = {
    0x00080018: ("sop_instance_uid", "str"),
    0x00100020: ("patient_id", "str"),
    0x0020000D: ("study_uid", "str"),
    0x0020000E: ("series_uid", "str"),
    0x00200013: ("instance_number", "int"),
    0x00200032: ("z", "z"),
    0x00280002: ("samples_per_pixel", "us"),
    0x00280004: ("photometric", "str"),
    0x00280008: ("number_of_frames", "int"),
    0x00280010: ("rows", "us"),
    0x00280011: ("cols", "us"),
    0x00280030: ("pixel_spacing", "float"),
    0x00280100: ("bits_allocated", "us"),
    0x00280101: ("bits_stored", "us"),
    0x00280103: ("pixel_representation", "us"),
    0x00281050: ("window_center", "float"),
    0x00281051: ("window_width", "float"),
    0x00281052: ("intercept", "float"),
    0x00281053: ("slope", "float"),
}
_PIXEL_DATA = 0x7FE00010
_TS_TAG = 0x00020010
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_HEAD_BYTES = 4096

_DEFAULTS: dict[str, object] = {
    "sop_instance_uid": "",
    "patient_id": "",
    "study_uid": "",
    "series_uid": "",
    "instance_number": -1,
    "z": math.nan,
    "rows": -1,
    "cols": -1,
    "pixel_spacing": math.nan,
    "samples_per_pixel": 1,
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


def _parse(
    path: Path,
    *,
    with_pixels: bool,
    buffer: bytearray | None = None,
    reader: ReaderChoice = "auto",
) -> _Parsed:
    """Parse a file with the fast path, or with pydicom when the fast path declines."""
    if reader not in ("auto", "fast", "pydicom"):
        raise DicomError(
            path, f"`reader` must be auto, fast or pydicom. Received: reader={reader!r}"
        )
    if reader == "pydicom":
        return _parse_pydicom(path, with_pixels=with_pixels)
    try:
        with open(path, "rb") as fh:
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
                    return _parse_fast(path, data, size, with_pixels=with_pixels)
                except _NeedMore:
                    if len(data) >= size:
                        raise _NotFast from None
                    data = bytes(data) + fh.read(len(data))
    except _NotFast:
        if reader == "fast":
            raise DicomError(path, "the fast reader does not handle this file") from None
    except OSError as exc:
        raise DicomError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return _parse_pydicom(path, with_pixels=with_pixels)


def _parse_fast(path: Path, data: bytes, size: int, *, with_pixels: bool) -> _Parsed:
    """Walk the data elements of an uncompressed little-endian file."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _NotFast
    fields: dict[str, object] = {}
    ts, pos = _walk_meta(data)
    fields["transfer_syntax"] = ts
    if ts not in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
        raise _NotFast
    explicit = ts == EXPLICIT_VR_LE
    end = len(data)
    while True:
        if pos + 8 > end:
            raise _NeedMore
        if explicit:
            group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
            pos += 8
            if vr in _LONG_VRS:
                if pos + 4 > end:
                    raise _NeedMore
                (length,) = _U32.unpack_from(data, pos)
                pos += 4
            elif not vr.isalpha():
                raise _NotFast
        else:
            group, elem, length = _IMPLICIT.unpack_from(data, pos)
            pos += 8
        tag = group << 16 | elem
        if length == _UNDEFINED:
            raise _NotFast
        if tag == _PIXEL_DATA:
            return _fast_result(path, data, size, pos, length, fields, with_pixels=with_pixels)
        if tag > _PIXEL_DATA:
            raise _NotFast
        if pos + length > end:
            raise _NeedMore
        spec = _TAG_FIELDS.get(tag)
        if spec is not None:
            fields[spec[0]] = _value(bytes(data[pos : pos + length]), spec[1], path, spec[0])
        pos += length


def _walk_meta(data: bytes) -> tuple[str, int]:
    """Return the transfer syntax and the offset of the dataset after the file meta."""
    pos, ts, end = 132, "", len(data)
    while pos + 8 <= end:
        group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
        if group != 0x0002:
            return ts, pos
        pos += 8
        if vr in _LONG_VRS:
            (length,) = _U32.unpack_from(data, pos)
            pos += 4
        if length == _UNDEFINED or pos + length > end:
            raise _NotFast
        if group << 16 | elem == _TS_TAG:
            ts = bytes(data[pos : pos + length]).decode("ascii", "replace").strip("\x00 ")
        pos += length
    raise _NeedMore


def _value(raw: bytes, kind: str, path: Path, name: str) -> object:
    """Decode one element value of a known VR (US, IS, DS, or text)."""
    if kind == "us":
        if len(raw) < 2:
            raise DicomError(path, f"`{name}` has {len(raw)} bytes, expected 2 (VR US)")
        return int.from_bytes(raw[:2], "little")
    text = raw.decode("latin-1").strip("\x00 ")
    if kind == "str":
        return text
    parts = [p.strip() for p in text.split("\\")]
    try:
        if kind == "z":
            return float(parts[2]) if len(parts) == 3 and parts[2] else math.nan
        if not parts[0]:
            return math.nan if kind == "float" else -1
        return float(parts[0]) if kind == "float" else int(float(parts[0]))
    except ValueError as exc:
        raise DicomError(path, f"`{name}` is not a number. Received: {text!r}") from exc


def _fast_result(
    path: Path,
    data: bytes,
    size: int,
    pos: int,
    length: int,
    fields: dict[str, object],
    *,
    with_pixels: bool,
) -> _Parsed:
    header = _make_header(fields)
    if header.bits_allocated != 16:
        raise _NotFast
    _check_image(path, header)
    expected = header.rows * header.cols * 2
    available = min(length, size - pos)
    error = ""
    if available < expected:
        error = f"truncated pixel data: expected {expected} bytes, found {available}"
    if not with_pixels:
        return _Parsed(header, pixel_error=error)
    if error:
        raise DicomError(path, error)
    return _Parsed(header, pixel_data=memoryview(data)[pos : pos + expected])


def _make_header(fields: dict[str, object]) -> DicomHeader:
    return DicomHeader(**{**_DEFAULTS, **fields})  # type: ignore[arg-type]


def _check_image(path: Path, header: DicomHeader) -> None:
    """Refuse what is not a single-frame grayscale image."""
    if header.rows <= 0 or header.cols <= 0:
        raise DicomError(
            path, f"not an image: Rows={header.rows}, Columns={header.cols} (0028,0010/0011)"
        )
    if header.samples_per_pixel != 1:
        raise DicomError(
            path, f"not grayscale: SamplesPerPixel={header.samples_per_pixel} (0028,0002)"
        )
    if header.number_of_frames != 1:
        raise DicomError(
            path, f"multi-frame files are not supported: NumberOfFrames={header.number_of_frames}"
        )
    if header.pixel_representation not in (0, 1):
        raise DicomError(
            path, f"PixelRepresentation must be 0 or 1. Received: {header.pixel_representation}"
        )


def _decode(path: Path, parsed: _Parsed) -> np.ndarray:
    """Stored values as a 2-D int16/uint16 (or pydicom's dtype) array."""
    header = parsed.header
    if parsed.pixel_data is not None:
        dtype = "<i2" if header.pixel_representation == 1 else "<u2"
        return np.frombuffer(parsed.pixel_data, dtype=dtype).reshape(header.rows, header.cols)
    try:
        arr = parsed.dataset.pixel_array  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types
        raise DicomError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2 or arr.shape != (header.rows, header.cols):
        raise DicomError(path, f"decoded pixel array has shape {arr.shape}, expected 2-D")
    return arr


@contextlib.contextmanager
def quiet_rsna_uids() -> Iterator[None]:
    """Silence pydicom's complaint about the RSNA "ID_<hex>" UIDs, and nothing else.

    DICOM UIDs are dotted digits (PS3.5 9.1); the RSNA files use "ID_<hex>" instead.
    That is how the data is, so it is not worth a warning per file.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Invalid value for VR UI: 'ID_[0-9a-f]+'")
        yield


def _parse_pydicom(path: Path, *, with_pixels: bool) -> _Parsed:
    """pydicom's general reader: every transfer syntax pydicom can parse."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        data = path.read_bytes()
        _check_inflated_size(path, data)
        with quiet_rsna_uids():
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not with_pixels)
            fields = _pydicom_fields(ds, path)
    except DicomError:
        raise
    except InvalidDicomError as exc:
        raise DicomError(path, f"not a DICOM file ({exc})") from exc
    except RecursionError as exc:
        raise DicomError(path, "sequences nested too deeply to parse") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad bytes
        raise DicomError(path, f"cannot parse DICOM ({type(exc).__name__}: {exc})") from exc
    header = _make_header(fields)
    if "PixelData" not in ds and with_pixels:
        if data[128:132] != b"DICM":
            raise DicomError(
                path, "not a DICOM file: no 'DICM' prefix and no (7FE0,0010) PixelData"
            )
        raise DicomError(path, "not an image: no (7FE0,0010) PixelData element")
    _check_image(path, header)
    return _Parsed(header, dataset=ds)


def _pydicom_fields(ds: object, path: Path) -> dict[str, object]:
    """Header fields from a pydicom Dataset, decoded like the fast path decodes them.

    Text elements are decoded from their raw bytes, which also spares pydicom's value
    validation (the RSNA files use "ID_<hex>" UIDs, which DICOM does not allow).
    """
    fields: dict[str, object] = {}
    meta = getattr(ds, "file_meta", None)
    ts = meta.get_item(_TS_TAG) if meta is not None else None
    if ts is not None:
        fields["transfer_syntax"] = _text(ts.value)
    for tag, (name, kind) in _TAG_FIELDS.items():
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


def _check_inflated_size(path: Path, data: bytes) -> None:
    """Refuse a deflated file that would inflate past MAX_INFLATED_BYTES."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return
    try:
        ts, pos = _walk_meta(data)
    except (_NotFast, _NeedMore, struct.error):
        return
    if ts != DEFLATED_EXPLICIT_VR_LE:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[pos:], MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise DicomError(path, f"deflated dataset is corrupt ({exc})") from exc
    if inflater.unconsumed_tail:
        raise DicomError(
            path, f"deflated dataset inflates past MAX_INFLATED_BYTES={MAX_INFLATED_BYTES}"
        )
