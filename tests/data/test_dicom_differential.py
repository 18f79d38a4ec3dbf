"""rsna.data.dicom against pydicom, file by file.

Every file of pydicom's own test data, and crafted slices in five encodings (explicit
and implicit VR little endian, explicit VR big endian, deflated, RLE) with the quirks
that broke the fast reader before (unused high bits, bad intercepts in big endian,
surplus and short pixel data), goes through both of rsna's readers. Each must give the
HU that pydicom's own ``pixel_array`` gives, or a DicomError where pydicom fails or the
file is out of rsna's scope (see :func:`reference`).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from harness import ENCODINGS, encode, ramp_hu, reference, replace_value, write_slice
from rsna.data.dicom import (
    DicomError,
    check_file,
    quiet_rsna_uids,
    read_header,
    read_hu,
)
from rsna.data.synthetic import GROUPS, expected_hu

READERS = ("auto", "fast", "pydicom")


def check_against_pydicom(path: Path) -> dict[str, str]:
    """Run every reader on `path`; return each one's outcome ("image" or "refused")."""
    expected = reference(path)
    outcomes = {}
    for reader in READERS:
        try:
            got = read_hu(path, reader=reader)
        except DicomError as exc:
            outcomes[reader] = "refused"
            if reader != "fast":  # the fast reader may decline any file it does not handle
                assert isinstance(expected, str), f"{reader} refused an in-scope file: {exc}"
            continue
        outcomes[reader] = "image"
        assert not isinstance(expected, str), f"{reader} read a file it must refuse: {expected}"
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected, err_msg=f"reader={reader}")
    if outcomes["fast"] == "image":
        assert read_header(path, reader="fast") == read_header(path, reader="pydicom")
    return outcomes


PYDICOM_FILES = sorted(p for p in map(Path, pydicom.data.get_testdata_files()) if p.is_file())


def test_pydicom_ships_test_files():
    assert len(PYDICOM_FILES) > 100  # so the parametrised test below cannot pass vacuously


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=[p.name for p in PYDICOM_FILES])
def test_every_pydicom_test_file(path):
    check_against_pydicom(path)


def test_pydicom_test_files_include_images_both_readers_take():
    outcomes = [check_against_pydicom(p) for p in PYDICOM_FILES]
    assert sum(o["fast"] == "image" for o in outcomes) >= 10
    assert sum(o["auto"] == "image" and o["fast"] == "refused" for o in outcomes) >= 3


# ------------------------------------------------------------------ crafted slices


def with_raw_pixels(ds: pydicom.Dataset, values: np.ndarray) -> pydicom.Dataset:
    """`ds` with its stored values replaced by `values` bit for bit (high bits included)."""
    ds.PixelData = values.astype("<u2" if values.dtype.kind == "u" else "<i2").tobytes()
    ds.Rows, ds.Columns = values.shape
    return ds


def slice_dataset(tmp_path: Path, *, group: str = "s16", bad_intercept: bool = False):
    hu = ramp_hu(16, 16, low=-1000, high=1500 if not bad_intercept else 3000)
    path = write_slice(tmp_path / f"src-{group}-{bad_intercept}.dcm", hu, group=group, bad_intercept=bad_intercept)  # fmt: skip
    with quiet_rsna_uids():
        return pydicom.dcmread(path)


def unused_bits(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Set the bits above BitsStored in every other pixel (PS3.5 8.1.1: meaningless)."""
    raw = np.frombuffer(ds.PixelData, "<u2").copy()
    raw[::2] |= 0xF000
    return with_raw_pixels(ds, raw.reshape(ds.Rows, ds.Columns))


CASES = {
    "s16": lambda t: slice_dataset(t),
    "s12": lambda t: slice_dataset(t, group="s12"),
    "u12": lambda t: slice_dataset(t, group="u12"),
    "bad intercept": lambda t: slice_dataset(t, group="u12", bad_intercept=True),
    "s12 unused bits set": lambda t: unused_bits(slice_dataset(t, group="s12")),
    "u12 unused bits set": lambda t: unused_bits(slice_dataset(t, group="u12")),
    "bad intercept, unused bits set": lambda t: unused_bits(
        slice_dataset(t, group="u12", bad_intercept=True)
    ),  # fmt: skip
    "odd size": lambda t: with_raw_pixels(
        slice_dataset(t), np.arange(15 * 21, dtype=np.int16).reshape(15, 21)
    ),  # fmt: skip
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_slices_in_five_encodings(tmp_path, case, encoding):
    path = encode(CASES[case](tmp_path), tmp_path / "x.dcm", encoding)
    outcomes = check_against_pydicom(path)
    assert outcomes["auto"] == "image"
    assert outcomes["fast"] == ("refused" if encoding == "RLE" else "image")


def test_unused_bits_are_masked_and_sign_extended(tmp_path):
    """The case that broke: the same pixels gave other HU in explicit LE than deflated."""
    ds = unused_bits(slice_dataset(tmp_path, group="s12"))
    explicit = read_hu(encode(ds, tmp_path / "e.dcm", "explicit LE"))
    deflated = read_hu(encode(slice_dataset_copy(ds), tmp_path / "d.dcm", "deflated"))
    np.testing.assert_array_equal(explicit, deflated)
    hu = ramp_hu(16, 16, low=-1000, high=1500)
    np.testing.assert_array_equal(explicit, expected_hu(hu, group=GROUPS["s12"]))
    raw = np.frombuffer(ds.PixelData, "<u2")
    assert (raw[::2] >= 0xF000).all() and (raw[1::2] < 0xF000).any()  # the high bits were set


def slice_dataset_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    copy = ds.copy()
    copy.file_meta = ds.file_meta.copy()
    return copy


def test_big_endian_bad_intercept_file_reads_the_true_hu(tmp_path):
    ds = slice_dataset(tmp_path, group="u12", bad_intercept=True)
    hu = read_hu(encode(ds, tmp_path / "be.dcm", "big endian"))
    np.testing.assert_array_equal(hu, np.rint(ramp_hu(16, 16, low=-1000, high=3000)))


@pytest.mark.parametrize("encoding", ["explicit LE", "implicit LE", "big endian", "deflated"])
@pytest.mark.parametrize(
    ("extra_bytes", "outcome"),
    [
        (0, "image"),
        (2, "image"),
        (256, "image"),
        (512, "refused"),
        (1024, "refused"),
        (-2, "refused"),
    ],
)
def test_surplus_and_short_pixel_data_follow_pydicom(tmp_path, encoding, extra_bytes, outcome):
    """Surplus short of a whole frame is padding (pydicom drops it); a whole extra frame
    means a multi-frame file, and short data is corrupt: both refused, as pydicom does."""
    ds = slice_dataset(tmp_path)
    raw = ds.PixelData
    ds.PixelData = raw + bytes(extra_bytes) if extra_bytes >= 0 else raw[:extra_bytes]
    outcomes = check_against_pydicom(encode(ds, tmp_path / "s.dcm", encoding))
    assert outcomes["auto"] == outcome


@pytest.mark.parametrize(
    ("tag", "vr", "value", "reason"),
    [
        ((0x0028, 0x1053), b"DS", b"inf", "must be finite"),
        ((0x0028, 0x1053), b"DS", b"0", "RescaleSlope"),
        ((0x0028, 0x1053), b"DS", b"-1", "RescaleSlope"),
        ((0x0028, 0x1053), b"DS", b"1e7", "RescaleSlope"),
        ((0x0028, 0x1052), b"DS", b"1e39", "RescaleIntercept"),
        ((0x0028, 0x1052), b"DS", b"nan", "must be finite"),
        ((0x0020, 0x0013), b"IS", b"inf", "IS range"),
        ((0x0020, 0x0013), b"IS", b"-inf", "IS range"),
        ((0x0020, 0x0013), b"IS", b"1e999", "IS range"),
        ((0x0020, 0x0013), b"IS", b"12345678901234567890", "IS range"),
        ((0x0020, 0x0013), b"IS", b"1.5", "IS range"),
        ((0x0028, 0x0010), b"US", struct.pack("<H", 1), "aspect ratio"),
        ((0x0028, 0x0011), b"US", struct.pack("<H", 65535), "MAX_DIMENSION"),
    ],
)
def test_values_out_of_range_are_refused_by_both_readers(tmp_path, tag, vr, value, reason):
    path = write_slice(tmp_path / "v.dcm", ramp_hu())
    if tag == (0x0020, 0x0013):  # the synthetic files carry InstanceNumber; make sure
        assert struct.pack("<HH2s", *tag, vr) in path.read_bytes()
    path.write_bytes(replace_value(path.read_bytes(), *tag, vr, value + b" " * (len(value) % 2)))
    for reader in READERS:
        with pytest.raises(DicomError, match=reason):
            read_hu(path, reader=reader)
    header, why = check_file(path)  # rsna prepare: refused too, with the reason
    assert header is None and reason in why
