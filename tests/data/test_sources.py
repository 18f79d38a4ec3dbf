"""rsna.data.sources: a plain folder of slices, with what does not belong in it."""

from __future__ import annotations

import os
import shutil
import signal
import warnings

import numpy as np
import pytest

from rsna.data.dicom import DicomError, read_hu
from rsna.data.sources import DicomFolder, ImageSpec, SourceError
from rsna.errors import DataWarning


@pytest.fixture()
def hang_guard():
    """Fail instead of hanging: a FIFO opened for reading blocks until a writer comes."""

    def alarm(signum, frame):
        raise TimeoutError("a read blocked")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_named_like_a_slice_is_refused_at_once(tmp_path, hang_guard):
    fifo = tmp_path / "ID_0123abcd.dcm"
    os.mkfifo(fifo)
    with pytest.raises(DicomError, match="not a regular file \\(a FIFO\\)"):
        read_hu(fifo)
    (tmp_path / "ID_0123abce.dcm").mkdir()
    with pytest.raises(DicomError, match="not a regular file \\(a folder\\)"):
        read_hu(tmp_path / "ID_0123abce.dcm")


def test_stray_entries_in_a_slice_folder_are_ignored_and_counted(tiny_competition, tmp_path, hang_guard):
    source = sorted((tiny_competition.root / "stage_2_train").glob("ID_*.dcm"))[:3]
    folder = tmp_path / "slices"
    folder.mkdir()
    for path in source:
        shutil.copy(path, folder / path.name)
    (folder / "notes.dcm").write_text("not a slice")
    (folder / "ID_ABC.dcm").write_bytes(source[0].read_bytes())  # upper case: no image ID
    (folder / "._ID_0abc.dcm").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    os.mkfifo(folder / "ID_00ff00ff.dcm")
    (folder / "ID_0000beef.dcm").symlink_to(source[1])  # a link to a slice is a slice
    with pytest.warns(DataWarning, match="ignored 4 entries that are not regular <image ID>.dcm files"):
        images = DicomFolder(folder, ImageSpec(size=32), scan_headers=True, workers=1)
    assert images.ignored == ("._ID_0abc.dcm", "ID_00ff00ff.dcm", "ID_ABC.dcm", "notes.dcm")
    assert sorted(images.slices.index) == sorted([p.stem for p in source] + ["ID_0000beef"])
    out = np.zeros((32, 32, 3), np.uint8)
    images.read_into("ID_0000beef", out)
    assert out.any()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.dcm").write_text("x")
    with warnings.catch_warnings(), pytest.raises(SourceError, match="no <image ID>.dcm files"):
        warnings.simplefilter("ignore", DataWarning)
        DicomFolder(empty)
