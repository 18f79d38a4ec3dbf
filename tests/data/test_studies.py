"""rsna.data.studies: any folder of DICOM files sorted into CT slices, skipped and
unreadable files, on pydicom's real DICOMDIR test tree and on crafted folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from harness import fuzz_settings, ramp_hu, write_slice
from rsna.data.dicom import check_file, quiet_rsna_uids
from rsna.data.labels import LABELS
from rsna.data.sources import DicomFiles, ImageSpec
from rsna.data.studies import (
    SKIP_KINDS,
    StudiesError,
    classify,
    list_files,
    scan_studies,
    study_table,
)

#: pydicom's DICOMDIR test tree: real CT, CR and MR headers, scouts, DICOMDIRs, READMEs.
REAL_TREE = Path(get_testdata_file("MR_small.dcm")).parent / "dicomdirtests"


def test_pydicoms_real_tree_keeps_the_axial_ct_slices_and_says_why_it_skips_the_rest():
    scan = scan_studies(REAL_TREE, workers=1)
    assert scan.counts() == {
        "slices": 9,  # 77654033/CT2 (4) and 98892001/CT5N (5)
        "not DICOM": 2,  # README.txt, TINY_ALPHA/README
        "not an image": 58,  # the DICOMDIRs and TINY_ALPHA's pixel-less records
        "not CT": 20,  # CR1-3 and the MR series
        "localizer": 2,  # 98892001/CT2N, ImageType ORIGINAL\PRIMARY\LOCALIZER
        "duplicate": 0,
        "unreadable": 0,
    }
    assert sum(scan.counts().values()) == len(list_files(REAL_TREE))
    slices = scan.slices
    assert slices.index.is_unique and set(slices["study_uid"].str[-3:]) == {"0.1"}
    assert slices.groupby("study_uid")["series_uid"].nunique().tolist() == [1, 1]
    ge = slices[slices["file"].str.startswith("77654033/CT2/")]
    # z order within the series, the gap kept: -99.48 then 103.02, 104.27, 105.52
    assert ge["slice_index"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(ge["z"], [-99.48, 103.02, 104.27, 105.52], atol=1e-2)
    assert (ge["series_length"] == 4).all()
    # the index is the SOPInstanceUID, as pydicom reads it
    first = pydicom.dcmread(REAL_TREE / ge["file"].iloc[0])
    assert ge.index[0] == first.SOPInstanceUID
    kinds = scan.skipped.set_index("file")["kind"]
    assert kinds["98892001/CT2N/6293"] == "localizer" and kinds["README.txt"] == "not DICOM"
    assert kinds["77654033/CR1/6154"] == "not CT" and kinds["DICOMDIR"] == "not an image"


def _edit(path: Path, **values) -> None:
    """Set (or, given None, delete) header elements of the DICOM file at `path`."""
    with quiet_rsna_uids():
        ds = pydicom.dcmread(path)
        for name, value in values.items():
            if value is None:
                delattr(ds, name)
            else:
                setattr(ds, name, value)
        ds.save_as(path)


def _mixed(folder: Path) -> Path:
    """Nested studies: two series of three slices (written out of z order), a copy of one
    slice, a file without series and study UIDs, a text file, an MR slice and a
    truncated slice."""
    hu = ramp_hu()
    for series, z0 in (("a", 0.0), ("b", 50.0)):
        for n, z in enumerate((z0 + 10, z0, z0 + 5)):  # written out of z order
            path = folder / "patient" / f"series_{series}" / f"IM{n}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_slice(path, hu, image_id=f"ID_{series}{n}", z=z)
            _edit(path, SeriesInstanceUID=f"ID_series_{series}")
    shutil.copy(folder / "patient/series_a/IM0", folder / "patient/copy_of_a0")
    (folder / "loose").mkdir()
    loose = write_slice(folder / "loose" / "x.dcm", hu, image_id="ID_loose", z=3.0)
    _edit(loose, SeriesInstanceUID=None, StudyInstanceUID=None)
    (folder / "notes.txt").write_text("not a scan\n")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    data = (folder / "patient/series_b/IM1").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 100])
    return folder


def test_a_mixed_folder_of_studies(tmp_path):
    scan = scan_studies(_mixed(tmp_path / "in"), workers=1)
    counts = scan.counts()
    assert counts["slices"] == 7 and counts["duplicate"] == 1 and counts["unreadable"] == 1
    assert counts["not DICOM"] == 1 and counts["not CT"] == 1
    skipped = scan.skipped.set_index("file")
    assert skipped.loc["patient/series_a/IM0", "kind"] == "duplicate"  # "copy_..." sorts first
    assert "patient/copy_of_a0" in skipped.loc["patient/series_a/IM0", "reason"]
    assert scan.unreadable["file"].tolist() == ["truncated.dcm"]
    assert "pixel data" in scan.unreadable["reason"].iloc[0]
    s = scan.slices
    a = s[s["series_uid"] == "ID_series_a"].sort_values("slice_index")
    assert a["z"].tolist() == [0.0, 5.0, 10.0] and (a["series_length"] == 3).all()
    assert a.loc["ID_a0", "file"] == "patient/copy_of_a0"  # the copy stands in for IM0
    b = s[s["series_uid"] == "ID_series_b"].sort_values("slice_index")
    assert b["z"].tolist() == [50.0, 55.0, 60.0] and b.index.tolist() == ["ID_b1", "ID_b2", "ID_b0"]
    # a file without series and study UIDs is its folder's series and its own study
    assert s.loc["ID_loose", "series_uid"] == "folder:loose"
    assert s.loc["ID_loose", "study_uid"] == "folder:loose"
    assert s.loc["ID_a1", "study_uid"] == "ID_study0001"


def test_dicom_files_read_the_scanned_slices_like_their_paths(tmp_path):
    scan = scan_studies(_mixed(tmp_path / "in"), workers=1)
    source = DicomFiles(scan.paths(), scan.slices, ImageSpec(size=16))
    assert len(source) == 7 and "ID_b2" in source
    expected = ImageSpec(size=16).preprocessor()(tmp_path / "in/patient/series_b/IM2")
    np.testing.assert_array_equal(source.read("ID_b2"), expected)
    assert source.slices.loc["ID_b2", "slice_index"] == 1


def test_a_folder_without_ct_slices_is_an_error_that_counts_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr")
    with pytest.raises(
        StudiesError, match=r"no readable CT slice among 2 files \(1 not DICOM, 1 not CT\)"
    ):
        scan_studies(tmp_path, workers=1)
    with pytest.raises(StudiesError, match="`dicom_dir` must be a folder"):
        scan_studies(tmp_path / "notes.txt", workers=1)


def test_linked_folders_are_not_followed_but_linked_files_are(tmp_path):
    (tmp_path / "data").mkdir()
    write_slice(tmp_path / "data" / "s.dcm", ramp_hu(), image_id="ID_s")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "data", root / "linked_folder")
    os.symlink(tmp_path / "data" / "s.dcm", root / "linked_file")
    assert list_files(root) == ["linked_file"]


def test_classify_on_headers():
    header, _ = check_file(get_testdata_file("CT_small.dcm"))
    assert classify(header, "") == ("slice", "")
    assert classify(header, "short pixel data") == ("unreadable", "short pixel data")
    kind, reason = classify(None, "cannot parse DICOM: not a DICOM file: no 'DICM'")
    assert kind == "not DICOM"
    assert classify(None, "not an image: missing (0028,0010) Rows")[0] == "not an image"
    assert classify(None, "`z` is not a number")[0] == "unreadable"


@fuzz_settings(30)
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=4), st.booleans())
def test_any_bytes_are_sorted_never_raised(tmp_path_factory, blobs, preamble):
    folder = tmp_path_factory.mktemp("fuzz")
    for n, blob in enumerate(blobs):
        (folder / f"f{n}").write_bytes((b"\0" * 128 + b"DICM" if preamble else b"") + blob)
    write_slice(folder / "good.dcm", ramp_hu(), image_id="ID_good")
    scan = scan_studies(folder, workers=1)
    assert scan.slices.index.tolist() == ["ID_good"]
    assert set(scan.skipped["kind"]) <= set(SKIP_KINDS)
    assert sum(scan.counts().values()) == len(blobs) + 1


def test_study_table_takes_each_labels_max_and_counts():
    slices = pd.DataFrame(
        {
            "study_uid": ["s1", "s1", "s1", "s2"],
            "series_uid": ["a", "a", "b", "c"],
            "patient_id": ["p", "p", "p", "q"],
            **{label: [0.1, 0.7, 0.3, 0.2] for label in LABELS},
        }
    )
    slices["epidural"] = [0.9, 0.0, 0.0, 0.05]
    table = study_table(slices)
    assert table.loc["s1", "slices"] == 3 and table.loc["s1", "series"] == 2
    assert table.loc["s1", "any"] == 0.7 and table.loc["s1", "epidural"] == 0.9
    assert table.loc["s2", "patient_id"] == "q" and table.loc["s2", "any"] == 0.2
