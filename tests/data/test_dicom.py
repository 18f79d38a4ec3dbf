"""rsna.data.dicom: HU on crafted files, the bad-intercept fix, both readers, and bad input."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from harness import ENCODINGS, encode, ramp_hu, write_slice
from rsna.data import dicom, elements
from rsna.data.dicom import (
    DicomError,
    check_file,
    fix_bad_intercept,
    needs_intercept_fix,
    read_header,
    read_hu,
    read_image,
)
from rsna.data.synthetic import GROUPS, expected_hu


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_read_hu_gives_back_the_stored_hu_for_every_header_group(tmp_path, group):
    hu = ramp_hu(low=-1000, high=1000)
    path = write_slice(tmp_path / "a.dcm", hu, group=group)
    out = read_hu(path)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_array_equal(out, expected_hu(hu, group=GROUPS[group]))
    np.testing.assert_array_equal(out, np.rint(hu))  # -1000..1000 fits every group exactly


def test_bad_intercept_file_reads_as_the_phantom_hu(tmp_path):
    hu = ramp_hu(low=-1000, high=3095)
    path = write_slice(tmp_path / "bad.dcm", hu, group="u12", bad_intercept=True)
    header = read_header(path)
    assert (header.bits_stored, header.pixel_representation, header.intercept) == (12, 0, 1.0)
    assert header.has_bad_intercept
    image = read_image(path)
    assert image.intercept_fixed and image.intercept == -1000.0
    np.testing.assert_array_equal(read_hu(path), np.rint(hu))
    # Without the fix, air would read as about +3097 HU: the fix is what makes it right.
    naive = pydicom.dcmread(path).pixel_array.astype(np.float32) + 1.0
    assert naive[0, 0] == 3097.0 and read_hu(path)[0, 0] == -1000.0


def test_fix_bad_intercept_closed_form():
    stored = np.array([[0, 1, 3095, 3096, 3097, 4095]], np.uint16)
    np.testing.assert_array_equal(fix_bad_intercept(stored), [[1000, 1001, 4095, 0, 1, 999]])
    # Out-of-range values take the int32 path and follow the same rule.
    wide = np.array([[65535, 7192, 0]], np.uint16)
    np.testing.assert_array_equal(
        fix_bad_intercept(wide), [[65535 + 1000 - 4096, 7192 + 1000 - 4096, 1000]]
    )


@pytest.mark.parametrize(
    ("bits", "rep", "intercept", "expected"),
    [(12, 0, 1.0, True), (12, 0, -99.0, True), (12, 0, -100.0, False), (12, 0, -1024.0, False),
     (12, 1, 1.0, False), (16, 1, 1.0, False), (16, 0, 1.0, False)],
)  # fmt: skip
def test_needs_intercept_fix_truth_table(bits, rep, intercept, expected):
    assert (
        needs_intercept_fix(bits_stored=bits, pixel_representation=rep, intercept=intercept)
        is expected
    )


def test_header_fields_and_multivalued_window(tmp_path):
    path = write_slice(
        tmp_path / "s12.dcm", ramp_hu(8, 12), group="s12", image_id="ID_00ff", z=-42.5
    )
    h = read_header(path)
    assert (h.sop_instance_uid, h.patient_id, h.study_uid, h.series_uid) == (
        "ID_00ff", "ID_patient01", "ID_study0001", "ID_series001",
    )  # fmt: skip
    assert (h.rows, h.cols, h.z, h.pixel_spacing) == (8, 12, -42.5, 0.5)
    assert (h.window_center, h.window_width) == (36.0, 80.0)  # "00036\\00036": element 0
    assert h.transfer_syntax == "1.2.840.10008.1.2"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_fast_path_agrees_with_pydicom(tmp_path, group):
    path = write_slice(tmp_path / "a.dcm", ramp_hu(), group=group)
    fast = read_image(path, fix_intercept=False)
    assert fast.reader == "fast"  # the fast path took it
    slow = read_image(path, fix_intercept=False, reader="pydicom")
    assert slow.reader == "pydicom" and fast.header == slow.header
    np.testing.assert_array_equal(fast.pixels, pydicom.dcmread(path).pixel_array)
    np.testing.assert_array_equal(fast.pixels, slow.pixels)


def test_read_into_a_reused_buffer_gives_the_same_pixels(tmp_path):
    a = write_slice(tmp_path / "a.dcm", ramp_hu(low=-500, high=500))
    b = write_slice(tmp_path / "b.dcm", ramp_hu(low=0, high=900))
    buffer = bytearray(1 << 16)
    np.testing.assert_array_equal(read_image(a, buffer=buffer).hu(), read_hu(a))
    np.testing.assert_array_equal(read_image(b, buffer=buffer).hu(), read_hu(b))
    small = bytearray(16)  # too small: read into fresh memory instead
    np.testing.assert_array_equal(read_image(a, buffer=small).hu(), read_hu(a))


# ----------------------------------------------------------- files only pydicom can read


def _resave(src: Path, dst: Path, *, transfer_syntax, big_endian: bool = False) -> Path:
    ds = pydicom.dcmread(src)
    if big_endian:
        ds.PixelData = ds.pixel_array.astype(">i2").tobytes()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    with dicom.quiet_rsna_uids():
        if big_endian:
            pydicom.dcmwrite(dst, ds, implicit_vr=False, little_endian=False, force_encoding=True)
        else:
            ds.save_as(dst, enforce_file_format=True)
    return dst


def test_big_endian_and_deflated_files_decode_through_the_fast_reader_as_pydicom_does(tmp_path):
    hu = ramp_hu(low=-1000, high=1500)
    src = write_slice(tmp_path / "src.dcm", hu)
    big = _resave(src, tmp_path / "big.dcm", transfer_syntax=ExplicitVRBigEndian, big_endian=True)
    deflated = _resave(
        src, tmp_path / "deflated.dcm", transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    for path in (big, deflated):
        assert read_image(path).reader == "fast"
        np.testing.assert_array_equal(read_hu(path), read_hu(path, reader="pydicom"))
        np.testing.assert_array_equal(read_hu(path), np.rint(hu))
        assert read_header(path) == read_header(src).__class__(
            **{**read_header(src).__dict__, "transfer_syntax": read_header(path).transfer_syntax}
        )


def test_rle_compressed_file_decodes(tmp_path):
    hu = ramp_hu(low=-1000, high=1500)
    src = write_slice(tmp_path / "src.dcm", hu)
    ds = pydicom.dcmread(src)
    with dicom.quiet_rsna_uids():
        ds.compress(RLELossless)
        ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_hu(tmp_path / "rle.dcm"), np.rint(hu))
    assert check_file(tmp_path / "rle.dcm")[1] == ""


def test_deflate_bomb_is_refused(tmp_path, monkeypatch):
    src = write_slice(tmp_path / "src.dcm", ramp_hu(64, 64))
    deflated = _resave(
        src, tmp_path / "deflated.dcm", transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    monkeypatch.setattr(elements, "MAX_INFLATED_BYTES", 1024)
    with pytest.raises(DicomError, match="inflates past MAX_INFLATED_BYTES"):
        read_hu(deflated)


# -------------------------------------------------------------------------- bad input


def _bytes_of(path: Path) -> bytes:
    return path.read_bytes()


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _bad_number(tmp_path: Path) -> Path:
    data = _bytes_of(write_slice(tmp_path / "src.dcm", ramp_hu()))
    return _put(tmp_path / "bn.dcm", data.replace(b"-1024 ", b"abc   ", 1))


def _non_image(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(write_slice(tmp_path / "src.dcm", ramp_hu()))
    del ds.PixelData
    with dicom.quiet_rsna_uids():
        ds.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)
    return tmp_path / "nopixels.dcm"


def _modified(tmp_path: Path, name: str, **changes) -> Path:
    ds = pydicom.dcmread(write_slice(tmp_path / "src.dcm", ramp_hu()))
    for key, value in changes.items():
        setattr(ds, key, value)
    with dicom.quiet_rsna_uids():
        ds.save_as(tmp_path / name, enforce_file_format=True)
    return tmp_path / name


def _deeply_nested(tmp_path: Path) -> Path:
    """Preamble, file meta, then 5000 nested sequences of undefined length."""
    meta = _bytes_of(write_slice(tmp_path / "src.dcm", ramp_hu()))
    ts_end = meta.index(b"1.2.840.10008.1.2.1") + 20
    head = meta[:ts_end]
    level = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    (tmp_path / "nested.dcm").write_bytes(head + level * 5000)
    return tmp_path / "nested.dcm"


def _jpeg_garbage(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(write_slice(tmp_path / "src.dcm", ramp_hu()))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8not a jpeg\xff\xd9"])
    with dicom.quiet_rsna_uids():
        ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    return tmp_path / "jpeg.dcm"


BAD_FILES = {
    "missing": (lambda t: t / "nope.dcm", "cannot read file"),
    "directory": (lambda t: t, "not a regular file \\(a folder\\)"),
    "empty": (lambda t: _put(t / "e.dcm", b""), "not an image|cannot parse|not a DICOM"),
    "random bytes": (
        lambda t: _put(t / "r.dcm", np.random.default_rng(0).bytes(3000)),
        "not an image|cannot parse|not a DICOM",
    ),
    "text": (
        lambda t: _put(t / "t.dcm", b"hello, world\n" * 20),
        "not an image|cannot parse|not a DICOM",
    ),
    "truncated pixel data": (
        lambda t: _put(t / "tr.dcm", _bytes_of(write_slice(t / "s.dcm", ramp_hu()))[:-100]),
        "truncated pixel data: expected 512 bytes, found 412",
    ),
    "truncated header": (
        lambda t: _put(t / "th.dcm", _bytes_of(write_slice(t / "s.dcm", ramp_hu()))[:300]),
        "not an image|cannot parse",
    ),
    "no pixel data": (_non_image, "not an image"),
    "colour": (
        lambda t: _modified(t, "rgb.dcm", SamplesPerPixel=3),
        "not grayscale: SamplesPerPixel=3",
    ),
    "multi-frame": (
        lambda t: _modified(t, "mf.dcm", NumberOfFrames=2),
        "multi-frame files are not supported",
    ),
    "bad number": (_bad_number, "`intercept` is not a number. Received: 'abc'"),
    "deep nesting": (_deeply_nested, "nested too deeply|cannot parse"),
    "undecodable JPEG": (_jpeg_garbage, "cannot decode pixel data"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_dicom_error_naming_file_and_reason(tmp_path, case):
    make, reason = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(DicomError, match=reason) as info:
        read_hu(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(path)


def test_oversized_file_is_refused(tmp_path, monkeypatch):
    path = write_slice(tmp_path / "a.dcm", ramp_hu())
    monkeypatch.setattr(dicom, "MAX_FILE_BYTES", 100)
    with pytest.raises(DicomError, match="more than MAX_FILE_BYTES=100"):
        read_hu(path)


def test_check_file_reports_truncation_without_decoding(tmp_path):
    good = write_slice(tmp_path / "good.dcm", ramp_hu())
    (tmp_path / "cut.dcm").write_bytes(good.read_bytes()[:-10])
    header, reason = check_file(tmp_path / "cut.dcm")
    assert header is not None and header.rows == 16  # the header is still readable
    assert reason == "truncated pixel data: expected 512 bytes, found 502"
    assert check_file(good) == (read_header(good), "")
    assert check_file(tmp_path / "missing.dcm")[0] is None


def test_pydicom_reads_our_bytes_as_valid_part10(tmp_path):
    path = write_slice(tmp_path / "a.dcm", ramp_hu())
    ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "ID_0123abcd"
    assert ds.Modality == "CT"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_file_cut_at_every_length_is_a_dicom_error(tmp_path, encoding):
    """Every cut, including inside a long-VR header (the cut that once leaked
    struct.error), gives a DicomError or, past the pixel data's end, the full image."""
    import pydicom

    src = write_slice(tmp_path / "src.dcm", ramp_hu(8, 8))
    with dicom.quiet_rsna_uids():
        whole = encode(pydicom.dcmread(src), tmp_path / "whole.dcm", encoding).read_bytes()
    expected = read_hu(tmp_path / "whole.dcm")
    cut = tmp_path / "cut.dcm"
    for length in range(len(whole)):
        cut.write_bytes(whole[:length])
        try:
            hu = read_hu(cut)
        except DicomError:
            continue
        np.testing.assert_array_equal(hu, expected)  # only trailing padding was cut
