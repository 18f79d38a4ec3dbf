"""Walk the data elements of a DICOM file within fixed bounds (PS3.5 section 7).

Every file :mod:`rsna.data.dicom` reads is walked here first, whichever reader decodes
it, so a hostile file costs at most :data:`MAX_ELEMENTS` element headers and
:data:`MAX_DEPTH` levels of nesting before it is refused, never minutes of parsing.
The walk covers what a parser must read to find the end of the dataset: the top-level
elements, and the items of every sequence of undefined length (defined lengths are
skipped, as pydicom skips them until a value is asked for).

Errors are :class:`ElementError` (the file is malformed or over a bound) or
:class:`NeedMore` (the bytes given end before the dataset does: read more of the file).
Nothing here reads files or imports pydicom.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DEFLATED_EXPLICIT_VR_LE",
    "EXPLICIT_VR_BE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_INFLATED_BYTES",
    "NATIVE_SYNTAXES",
    "NOT_DICOM",
    "PIXEL_DATA",
    "UNDEFINED",
    "Element",
    "ElementError",
    "NeedMore",
    "Syntax",
    "Walker",
    "inflate",
    "read_meta",
]

#: Most data elements in one file, nested ones included. A CT slice has about 100.
MAX_ELEMENTS = 20_000
#: Deepest nesting of sequences.
MAX_DEPTH = 16
#: A deflated dataset may not inflate past this (a 512x512 16-bit slice is 0.5 MB).
MAX_INFLATED_BYTES = 64 * 1024 * 1024
_INFLATE_STEP = 1024 * 1024

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Every VR of PS3.5 table 6.2-1; those with a 4-byte length in explicit VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = _VRS - _LONG_VRS
#: Per byte order: an explicit VR header (tag, VR, 2-byte length), an implicit VR
#: header (tag, 4-byte length), and a 4-byte length.
_STRUCTS = {
    order: (
        struct.Struct(f"{order}HH2sH"),
        struct.Struct(f"{order}HHI"),
        struct.Struct(f"{order}I"),
    )
    for order in "<>"
}

#: How a reason for a file that is no DICOM file begins (no PS3.10 preamble).
NOT_DICOM = "not a DICOM file"


class ElementError(ValueError):
    """The data elements are malformed, or the file is over a bound."""


class NeedMore(Exception):
    """The bytes given end before the dataset does."""


@dataclass(frozen=True)
class Syntax:
    """How a dataset is encoded: explicit or implicit VR, byte order, compressed pixels."""

    explicit: bool
    little: bool
    encapsulated: bool = False

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


#: The transfer syntaxes whose pixel data is stored uncompressed (a deflated dataset is
#: explicit VR little endian once inflated).
NATIVE_SYNTAXES: dict[str, Syntax] = {
    IMPLICIT_VR_LE: Syntax(explicit=False, little=True),
    EXPLICIT_VR_LE: Syntax(explicit=True, little=True),
    DEFLATED_EXPLICIT_VR_LE: Syntax(explicit=True, little=True),
    EXPLICIT_VR_BE: Syntax(explicit=True, little=False),
}


class Element(NamedTuple):
    """One data element: its tag, VR (b"" in implicit VR), and where its value lies."""

    tag: int
    vr: bytes
    offset: int  # first byte of the value
    length: int  # bytes of the value, or UNDEFINED

    @property
    def end(self) -> int:
        return self.offset + self.length


def read_meta(data: bytes | memoryview) -> tuple[str, int]:
    """The transfer syntax UID (0002,0010) and where the dataset starts after the file
    meta information (PS3.10 section 7.1: 128-byte preamble, "DICM", group 0002 in
    explicit VR little endian).

    Raises:
        ElementError: no "DICM" prefix, a malformed meta element, or no transfer syntax.
        NeedMore: `data` ends inside the file meta information.
    """
    if len(data) < 132:
        raise NeedMore
    if bytes(data[128:132]) != b"DICM":
        raise ElementError(f"{NOT_DICOM}: no 'DICM' at byte 128 (PS3.10 file preamble)")
    explicit, _, u32 = _STRUCTS["<"]
    pos, ts = 132, ""
    while True:
        if pos + 8 > len(data):
            raise NeedMore
        group, number, vr, length = explicit.unpack_from(data, pos)
        if group != 0x0002:
            break
        if vr not in _VRS:
            raise ElementError(
                f"invalid VR {vr!r} of (0002,{number:04X}) in the file meta information"
            )
        pos += 8
        if vr in _LONG_VRS:
            if pos + 4 > len(data):
                raise NeedMore
            (length,) = u32.unpack_from(data, pos)
            pos += 4
        if length == UNDEFINED:
            raise ElementError(f"file meta element (0002,{number:04X}) has an undefined length")
        if pos + length > len(data):
            raise NeedMore
        if number == 0x0010:
            ts = bytes(data[pos : pos + length]).decode("ascii", "replace").strip("\x00 ")
        pos += length
    if not ts:
        raise ElementError("no (0002,0010) TransferSyntaxUID in the file meta information")
    return ts, pos


def inflate(data: bytes | memoryview, *, limit: int | None = None) -> bytes | bytearray:
    """Inflate a deflated dataset (raw deflate, PS3.5 A.5), refusing more than `limit`
    bytes (default :data:`MAX_INFLATED_BYTES`).

    Raises:
        ElementError: corrupt data, or more than `limit` bytes once inflated.
    """
    limit = MAX_INFLATED_BYTES if limit is None else limit
    inflater, out = zlib.decompressobj(-zlib.MAX_WBITS), bytearray()
    pending = bytes(data)
    try:
        while pending or not inflater.eof:  # in steps, so memory stays near the output's size
            out += inflater.decompress(pending, _INFLATE_STEP)
            pending = inflater.unconsumed_tail
            if len(out) > limit:
                raise ElementError(f"deflated dataset inflates past MAX_INFLATED_BYTES={limit}")
            if not pending and not inflater.eof:
                raise ElementError("deflated dataset is truncated: its stream has no end")
    except zlib.error as exc:
        raise ElementError(f"deflated dataset is corrupt ({exc})") from exc
    return bytes(out) if len(out) < _INFLATE_STEP else out


class Walker:
    """Walk the elements of one dataset, counting them against :data:`MAX_ELEMENTS`.

    Args:
        data: the bytes of the file (or of an inflated dataset).
        syntax: how the dataset is encoded.
        complete: True when `data` is the whole dataset, so running out of bytes means
            the file is truncated (:class:`ElementError`); False when more can be read
            (:class:`NeedMore`).
        limit: the element bound (default :data:`MAX_ELEMENTS`).
    """

    def __init__(
        self,
        data: bytes | memoryview,
        syntax: Syntax,
        *,
        complete: bool,
        limit: int | None = None,
    ) -> None:
        self.data, self.syntax, self.complete = data, syntax, complete
        self.limit = MAX_ELEMENTS if limit is None else limit
        self.count = 0
        self._explicit, self._implicit, self._u32 = _STRUCTS[syntax.order]

    def need(self, stop: int, end: int) -> None:
        """Raise unless the bytes up to `stop` are within `end` and have been read."""
        if stop > end:
            raise ElementError(f"the file ends inside a data element (byte {end} of {stop} needed)")
        if stop > len(self.data):
            if self.complete:
                raise ElementError(f"the data ends at byte {len(self.data)}, {stop} needed")
            raise NeedMore

    def header(self, pos: int, end: int, *, depth: int, explicit: bool | None = None) -> Element:
        """The element header at `pos`; items and delimiters have no VR in any syntax."""
        self.count += 1
        if self.count > self.limit:
            raise ElementError(f"more than MAX_ELEMENTS={self.limit} data elements")
        if depth > MAX_DEPTH:
            raise ElementError(f"sequences nested too deeply (more than MAX_DEPTH={MAX_DEPTH})")
        self.need(pos + 8, end)
        explicit = self.syntax.explicit if explicit is None else explicit
        group, number, vr, short = self._explicit.unpack_from(self.data, pos)
        tag = group << 16 | number
        if group == 0xFFFE or not explicit:
            return Element(tag, b"", pos + 8, self._implicit.unpack_from(self.data, pos)[2])
        if vr not in _VRS:
            raise ElementError(f"invalid VR {vr!r} of ({group:04X},{number:04X}) at byte {pos}")
        if vr in _LONG_VRS:
            self.need(pos + 12, end)
            return Element(tag, vr, pos + 12, self._u32.unpack_from(self.data, pos + 8)[0])
        return Element(tag, vr, pos + 8, short)

    def elements(self, pos: int, end: int) -> Iterator[Element]:
        """The top-level elements from `pos`, each checked and its sequences walked.

        Pixel data of defined length is yielded before its value is checked against
        the data, so the caller can name a truncated image; the walk then stops unless
        the value is all there. The common case (a short element of defined length) is
        read inline: this loop runs for every file of the data set.
        """
        data, available = self.data, len(self.data)
        explicit = self.syntax.explicit
        unpack = (self._explicit if explicit else self._implicit).unpack_from
        while pos < end:
            element = None
            if pos + 12 <= min(end, available) and self.count + 1 < self.limit:
                if explicit:
                    group, number, vr, length = unpack(data, pos)
                    if vr in _SHORT_VRS and group != 0xFFFE:
                        element = Element(group << 16 | number, vr, pos + 8, length)
                else:
                    group, number, length = unpack(data, pos)
                    if group != 0xFFFE:
                        element = Element(group << 16 | number, b"", pos + 8, length)
            if element is None:  # a long VR, an item, or near an edge: the checked path
                element = self.header(pos, end, depth=0)
            else:
                self.count += 1
            if element.tag & 0xFFFF0000 == 0xFFFE0000:
                raise ElementError(f"unexpected item or delimiter at byte {pos}")
            if element.length == UNDEFINED:
                pos = self._undefined(element, end, depth=0)
                yield element
                continue
            stop = element.offset + element.length
            if element.tag == PIXEL_DATA:
                yield element
                self.need(stop, end)
            else:
                self.need(stop, end)
                yield element
            pos = stop

    def _undefined(self, element: Element, end: int, *, depth: int) -> int:
        """Walk an element of undefined length (a sequence, encapsulated pixel data, or
        UN holding implicit VR items); return where it ends."""
        if element.tag == PIXEL_DATA:
            return self._items(element.offset, end, depth=depth + 1, fragments=True)
        explicit = False if element.vr == b"UN" else None
        return self._items(element.offset, end, depth=depth + 1, explicit=explicit)

    def _items(
        self, pos: int, end: int, *, depth: int, fragments: bool = False, explicit=None
    ) -> int:
        while True:
            item = self.header(pos, end, depth=depth)
            if item.tag == _SEQUENCE_END:
                return item.offset
            if item.tag != _ITEM:
                raise ElementError(f"expected an item (FFFE,E000) at byte {pos}")
            if item.length == UNDEFINED:
                if fragments:
                    raise ElementError(f"a pixel data fragment of undefined length at byte {pos}")
                pos = self._dataset(item.offset, end, depth=depth, explicit=explicit)
                continue
            self.need(item.end, end)
            if not fragments:
                self._dataset(item.offset, item.end, depth=depth, explicit=explicit, bounded=True)
            pos = item.end

    def _dataset(
        self, pos: int, end: int, *, depth: int, explicit=None, bounded: bool = False
    ) -> int:
        """Walk an item's dataset: to `end` (`bounded`) or to its item delimiter."""
        while not bounded or pos < end:
            element = self.header(pos, end, depth=depth, explicit=explicit)
            if element.tag == _ITEM_END:
                if bounded:
                    raise ElementError(
                        f"an item delimiter inside an item of defined length at byte {pos}"
                    )
                return element.offset
            if element.length == UNDEFINED:
                inner = False if element.vr == b"UN" or explicit is False else None
                pos = self._items(element.offset, end, depth=depth + 1, explicit=inner)
                continue
            self.need(element.end, end)
            pos = element.end
        return pos
