"""Real head CT through every reader: pydicom-data's 693_UNCR.dcm (a non-contrast axial
slice, 512x512, BitsStored 14, intercept -1024, -2000 padding), pydicom's
J2K_pixelrep_mismatch.dcm (a skull-base slice, lossless JPEG 2000, unsigned data in a
signed header) and the four GE head-CT headers of dicomdirtests/77654033/CT2 (a gap in z).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from rsna.data.crop import HEAD_HU, head_box
from rsna.data.dicom import DicomError, read_header, read_hu, read_image
from rsna.data.series import MAX_GAP_RATIO, geometry, slice_order
from rsna.data.windowing import BRAIN, SUBDURAL, apply_window


def real_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data, in the test extra)")
    return Path(path)


def pydicom_hu(path: Path) -> np.ndarray:
    """pydicom's own HU: the decoded pixels through the Modality LUT (PS3.3 C.11.1)."""
    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:  # no JPEG 2000 plugin installed
        pytest.skip(f"pydicom cannot decode {path.name} here: {exc}")
    return apply_modality_lut(pixels, ds).astype(np.float32)


@pytest.mark.parametrize("reader", ["auto", "fast", "pydicom"])
def test_a_real_uncompressed_slice_reads_pydicoms_hu(reader):
    path = real_file("693_UNCR.dcm")
    hu = read_hu(path, reader=reader)
    np.testing.assert_array_equal(hu, pydicom_hu(path))
    header = read_header(path, reader=reader)
    assert (header.bits_stored, header.pixel_representation, header.intercept) == (14, 1, -1024.0)
    assert hu.min() == -3024.0  # the -2000 padding outside the field of view
    assert 1000 < hu.max() < 3000  # skull


def test_a_real_jpeg2000_slice_reads_pydicoms_hu():
    path = real_file("J2K_pixelrep_mismatch.dcm")
    expected = pydicom_hu(path)  # skips without a JPEG 2000 plugin
    image = read_image(path)
    assert image.reader == "pydicom"  # compressed pixels are pydicom's
    np.testing.assert_array_equal(image.hu(), expected)
    with pytest.raises(DicomError, match="J2K_pixelrep_mismatch.dcm"):
        read_hu(path, reader="fast")


@pytest.mark.parametrize("window", [BRAIN, SUBDURAL], ids=["brain", "subdural"])
def test_a_real_slice_windows_to_the_hand_computed_levels(window):
    hu = pydicom_hu(real_file("693_UNCR.dcm")).astype(np.float64)
    # (HU - lower edge) / width, clipped to [0, 1], times 255, rounded to nearest
    expected = np.rint(np.clip((hu - window.lower) / window.width, 0, 1) * 255).astype(np.uint8)
    ds = pydicom.dcmread(real_file("693_UNCR.dcm"))
    stored = ds.pixel_array
    got = apply_window(stored, window, slope=1.0, intercept=float(ds.RescaleIntercept))
    np.testing.assert_array_equal(got, expected)
    brain = (hu > 20) & (hu < 45)
    assert 40 < got[brain].mean() < 140  # grey and white matter sit mid-window


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_the_head_crop_keeps_the_whole_head_of_a_real_slice(name):
    hu = pydicom_hu(real_file(name))
    box = head_box(hu)
    assert box is not None
    above = (hu > HEAD_HU).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    head = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    inside = np.zeros(hu.shape, bool)
    inside[max(box.top, 0) : box.top + box.side, max(box.left, 0) : box.left + box.side] = True
    assert head.sum() > 0.25 * hu.size and not (head & ~inside).any()
    # whatever else is above -200 HU outside the box is small (the scanner's headrest)
    outside = above.astype(bool) & ~inside
    assert outside.sum() < 0.05 * head.sum()
    assert box.side < 0.95 * max(hu.shape)  # it does crop


def test_real_ge_series_headers_sort_by_z_and_report_their_gap():
    folder = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "77654033" / "CT2"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not in this pydicom")
    headers = {p.name: read_header(p) for p in sorted(folder.iterdir())}
    frame = pd.DataFrame(
        {
            "series_uid": [h.series_uid for h in headers.values()],
            "z": [h.z for h in headers.values()],
            "instance_number": [h.instance_number for h in headers.values()],
        },
        index=pd.Index(list(headers), name="image_id"),
    )
    assert frame["series_uid"].nunique() == 1
    order = slice_order(frame).sort_values("slice_index")
    z = frame.loc[order.index, "z"].to_numpy()
    assert np.all(np.diff(z) > 0) and z[0] == pytest.approx(-99.48)
    assert frame.loc[order.index, "instance_number"].tolist() == [18, 180, 181, 182]
    gaps = geometry(z)
    # 202.5 mm to the next slice against a median of 1.25 mm: clipped at MAX_GAP_RATIO
    assert gaps[0, 2] == MAX_GAP_RATIO and gaps[1, 1] == MAX_GAP_RATIO
    np.testing.assert_allclose(gaps[1:, 2][:-1], 1.0, atol=1e-5)
    np.testing.assert_allclose(gaps[:, 0], [0, 1 / 3, 2 / 3, 1], atol=1e-6)
