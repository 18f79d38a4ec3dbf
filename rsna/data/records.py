"""TFRecord files without TensorFlow: write records, and read one back by its offset.

A store's shards are TFRecord files, so ``tf.data.TFRecordDataset`` streams them
natively, in C++, from any path ``tf.io.gfile`` knows (a local disk, ``gs://``). The
format is TensorFlow's own (``tensorflow/core/lib/io/record_writer.cc``), one record
after another::

    uint64  length                       little endian
    uint32  masked CRC-32C of length
    byte    data[length]
    uint32  masked CRC-32C of data

The data stages never import TensorFlow, so this module writes that framing with
``google-crc32c``, and reads a single record at a known offset for random access by
image ID, checking both checksums: a corrupted byte is a :class:`RecordError` naming
the file and the offset, never wrong data.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from rsna.errors import RsnaError

__all__ = ["FOOTER_BYTES", "HEADER_BYTES", "RecordError", "masked_crc", "read_record", "record_at", "write_records"]

#: Bytes of framing before a record's data (length and its CRC), and after it.
HEADER_BYTES, FOOTER_BYTES = 12, 4
_LENGTH = struct.Struct("<Q")
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class RecordError(RsnaError):
    """A record is truncated, or its checksum does not match: the file is corrupted."""


def masked_crc(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C: rotate right by 15 bits, add a constant (mod 2**32)."""
    crc = google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_records(fh: BinaryIO, records: Iterable[bytes]) -> list[tuple[int, int]]:
    """Append TFRecord records to an open binary file; return each one's (offset, length),
    the offset being where its framing starts."""
    placed = []
    offset = fh.tell()
    for data in records:
        length = len(data)
        fh.write(_HEADER.pack(length, masked_crc(_LENGTH.pack(length))))
        fh.write(data)
        fh.write(_FOOTER.pack(masked_crc(data)))
        placed.append((offset, length))
        offset += HEADER_BYTES + length + FOOTER_BYTES
    return placed


def read_record(fd: int, offset: int, length: int, *, path: str | os.PathLike[str]) -> bytes:
    """The data of the record at `offset`, expected to hold `length` bytes.

    Args:
        fd: an open file descriptor of the file (read with ``os.pread``, so threads and
            forked processes can share it without seeking).
        offset: where the record's framing starts.
        length: the data length the index recorded.
        path: the file, for messages.

    Raises:
        RecordError: the file ends early, or a length or a checksum does not match.
    """
    return record_at(os.pread(fd, HEADER_BYTES + length + FOOTER_BYTES, offset), 0, length, path=path, offset=offset)


def record_at(
    blob: bytes | memoryview, start: int, length: int, *, path: str | os.PathLike[str], offset: int | None = None
) -> bytes:
    """The data of the record whose framing starts at `start` in `blob` (a whole file, or
    the record's own bytes), checked as :func:`read_record` checks it; `offset` names the
    record's place in its file for messages (default: `start`).

    Raises:
        RecordError: the bytes end early, or a length or a checksum does not match.
    """
    offset = start if offset is None else offset
    size = HEADER_BYTES + length + FOOTER_BYTES
    raw = bytes(blob[start : start + size])
    if len(raw) < size:
        raise RecordError(
            f"{_where(path, offset)}: the file ends inside the record ({len(raw)} of {size} bytes)"
        )
    stored_length, length_crc = _HEADER.unpack_from(raw, 0)
    if length_crc != masked_crc(raw[:8]) or stored_length != length:
        raise RecordError(
            f"{_where(path, offset)}: the record's length is corrupted "
            f"(reads {stored_length}, the index says {length})"
        )
    data = raw[HEADER_BYTES : HEADER_BYTES + length]
    (data_crc,) = _FOOTER.unpack_from(raw, HEADER_BYTES + length)
    if data_crc != masked_crc(data):
        raise RecordError(
            f"{_where(path, offset)}: checksum mismatch, the record's data is corrupted"
        )
    return data


def _where(path: str | os.PathLike[str], offset: int) -> str:
    """Where a record is, for a message (made only when one is needed)."""
    return f"{Path(path).name} at byte {offset}"
