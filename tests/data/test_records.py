"""rsna.data.records: TFRecord framing without TensorFlow, equal to TensorFlow's own, and a
reader that never returns corrupted data."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsna.data.records import HEADER_BYTES, RecordError, read_record, write_records

BLOBS = [b"", b"x", bytes(range(256)) * 3, os.urandom(40_000)]


def test_our_files_are_byte_for_byte_tensorflows(tmp_path):
    import tensorflow as tf

    with open(tmp_path / "ours.tfrecord", "wb") as fh:
        write_records(fh, BLOBS)
    with tf.io.TFRecordWriter(str(tmp_path / "theirs.tfrecord")) as writer:
        for blob in BLOBS:
            writer.write(blob)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "theirs.tfrecord").read_bytes()
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord"))]
    assert read == BLOBS


def test_random_access_by_offset(tmp_path):
    with open(tmp_path / "r.tfrecord", "wb") as fh:
        placed = write_records(fh, BLOBS)
    fd = os.open(tmp_path / "r.tfrecord", os.O_RDONLY)
    try:
        for (offset, length), blob in reversed(list(zip(placed, BLOBS, strict=True))):
            assert read_record(fd, offset, length, path="r.tfrecord") == blob
    finally:
        os.close(fd)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_any_damaged_byte_is_a_record_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("records") / "r.tfrecord"
    with open(path, "wb") as fh:
        placed = write_records(fh, BLOBS[1:])
    raw = bytearray(path.read_bytes())
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))
    fd = os.open(path, os.O_RDONLY)
    try:
        for (offset, length), blob in zip(placed, BLOBS[1:], strict=True):
            end = offset + HEADER_BYTES + length + 4
            if offset <= position < end:
                with pytest.raises(RecordError):
                    read_record(fd, offset, length, path=path)
            else:
                assert read_record(fd, offset, length, path=path) == blob
    finally:
        os.close(fd)
