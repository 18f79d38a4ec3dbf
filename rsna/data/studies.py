"""Any folder of DICOM files as studies of CT slices, for ``rsna predict --dicom-dir``.

Every regular file under the root, in any folder structure and under any name, is read
once (the header; compressed pixels are decoded to check them), on all cores with a
progress bar. Each file is one of:

* a **slice**: a single-frame grayscale CT image (Modality (0008,0060) ``CT``, or blank)
  that is no scout (ImageType (0008,0008) without ``LOCALIZER``);
* **skipped**, by kind (:data:`SKIP_KINDS`): not a DICOM file; a DICOM file that holds
  no single grayscale image (a DICOMDIR, a report, a multi-frame or colour file); not
  CT (MR, CR, ...); a localizer; a second file with a slice's SOPInstanceUID;
* **unreadable**: a CT image whose header or pixels are corrupt or truncated. It is
  listed with its reason, never fatal.

A slice's image ID is its SOPInstanceUID (0008,0018), as in the competition; its series
and study are SeriesInstanceUID (0020,000E) and StudyInstanceUID (0020,000D), or the
file's folder when a file lacks them; its place in the series is ImagePositionPatient
(0020,0032) z, then InstanceNumber (:func:`rsna.data.series.slice_order`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna.data.dicom import NOT_AN_IMAGE, NOT_DICOM, DicomHeader, check_file
from rsna.data.labels import LABELS
from rsna.data.series import slice_order
from rsna.errors import RsnaError
from rsna.parallel import parallel_map

__all__ = [
    "SKIP_KINDS",
    "SLICE_COLUMNS",
    "StudiesError",
    "StudyScan",
    "classify",
    "list_files",
    "scan_file_kind",
    "scan_studies",
    "study_table",
]

#: Why a file under the root is not a slice (besides being unreadable).
SKIP_KINDS = ("not DICOM", "not an image", "not CT", "localizer", "duplicate")
#: The columns of :attr:`StudyScan.slices`, indexed by image ID.
SLICE_COLUMNS = (
    "file", "patient_id", "study_uid", "series_uid", "z", "instance_number",
    "slice_index", "series_length",
)  # fmt: skip
_HEADER = ("patient_id", "study_uid", "series_uid", "z", "instance_number")


class StudiesError(RsnaError):
    """The folder does not exist, or holds no CT slice."""


@dataclass(frozen=True)
class StudyScan:
    """The files under `root`: the CT slices, the files skipped, the unreadable ones."""

    root: Path
    slices: pd.DataFrame  # SLICE_COLUMNS by image ID, in (series, slice) order
    skipped: pd.DataFrame  # file, kind (SKIP_KINDS), reason
    unreadable: pd.DataFrame  # file, reason

    def counts(self) -> dict[str, int]:
        """Files per outcome: slices, each skip kind, unreadable."""
        kinds = self.skipped["kind"].value_counts()
        return {
            "slices": len(self.slices),
            **{kind: int(kinds.get(kind, 0)) for kind in SKIP_KINDS},
            "unreadable": len(self.unreadable),
        }

    def paths(self) -> dict[str, str]:
        """Image ID -> the slice's file (an absolute path)."""
        return {i: str(self.root / f) for i, f in self.slices["file"].items()}


def classify(header: DicomHeader | None, reason: str) -> tuple[str, str]:
    """``(kind, reason)`` of a file from :func:`rsna.data.dicom.check_file`'s result: kind
    is ``"slice"``, ``"unreadable"`` or one of :data:`SKIP_KINDS`."""
    if header is None:
        if NOT_DICOM in reason:  # also as "cannot parse DICOM: not a DICOM file: ..."
            return "not DICOM", reason
        if reason.startswith(NOT_AN_IMAGE):
            return "not an image", reason
        return "unreadable", reason
    if header.modality not in ("CT", ""):
        return "not CT", f"Modality (0008,0060) is {header.modality!r}"
    if "LOCALIZER" in header.image_type.upper().split("\\"):
        return "localizer", f"ImageType (0008,0008) is {header.image_type!r}"
    return ("unreadable", reason) if reason else ("slice", "")


def scan_file_kind(job: tuple[str, str]) -> dict[str, object]:
    """One row for the file ``job = (root, relative path)``: its kind, reason and header."""
    root, rel = job
    header, reason = check_file(Path(root) / rel)
    kind, reason = classify(header, reason)
    row: dict[str, object] = {"file": rel, "kind": kind, "reason": reason}
    if kind == "slice" and header is not None:
        row.update({c: getattr(header, c) for c in _HEADER}, sop=header.sop_instance_uid)
    return row


def list_files(root: str | os.PathLike[str]) -> list[str]:
    """The regular files under `root` (symlinks to files included, linked folders not
    followed), as sorted POSIX paths relative to it.

    Raises:
        StudiesError: `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise StudiesError(f"`dicom_dir` must be a folder. Received: dicom_dir={str(root)!r}")
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def scan_studies(root: str | os.PathLike[str], *, workers: int | None = None) -> StudyScan:
    """Read every file under `root` once and sort it into slices, skipped and unreadable.

    Raises:
        StudiesError: `root` is not a folder, or holds no readable CT slice.
    """
    root = Path(root)
    names = list_files(root)
    jobs = [(str(root), name) for name in names]
    rows = pd.DataFrame(
        list(parallel_map(scan_file_kind, jobs, workers=workers, desc="read headers")),
        columns=["file", "kind", "reason", *_HEADER, "sop"],
    )
    slices, duplicates = _slices(rows[rows["kind"] == "slice"])
    skipped = pd.concat([rows[rows["kind"].isin(SKIP_KINDS)], duplicates])
    scan = StudyScan(
        root,
        slices,
        skipped[["file", "kind", "reason"]].sort_values("file").reset_index(drop=True),
        rows.loc[rows["kind"] == "unreadable", ["file", "reason"]].reset_index(drop=True),
    )
    if scan.slices.empty:
        counts = ", ".join(f"{v} {k}" for k, v in scan.counts().items() if v)
        raise StudiesError(
            f"{root}: no readable CT slice among {len(names)} files ({counts or 'none'})"
        )
    return scan


def _slices(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The slices by image ID in series order, and the files that repeat an image ID."""
    rows = rows.copy()
    folder = rows["file"].map(lambda f: "folder:" + (Path(f).parent.as_posix()))
    rows["image_id"] = rows["sop"].where(rows["sop"] != "", "file:" + rows["file"])
    rows["series_uid"] = rows["series_uid"].where(rows["series_uid"] != "", folder)
    rows["study_uid"] = rows["study_uid"].where(rows["study_uid"] != "", rows["series_uid"])
    repeat = rows.duplicated("image_id", keep="first")  # rows are sorted by file
    first = rows[~repeat].set_index("image_id")["file"]
    duplicates = rows.loc[repeat, ["file"]].assign(
        kind="duplicate",
        reason=[f"SOPInstanceUID (0008,0018) of {first[i]}" for i in rows.loc[repeat, "image_id"]],
    )
    kept = rows[~repeat].set_index("image_id")
    kept = kept.astype({"z": np.float64, "instance_number": np.int64})
    kept[["slice_index", "series_length"]] = slice_order(kept)
    kept = kept.sort_values(["study_uid", "series_uid", "slice_index"])
    return kept[list(SLICE_COLUMNS)], duplicates


def study_table(slices: pd.DataFrame) -> pd.DataFrame:
    """One row per study of per-slice probabilities: the max of each label over its
    slices, and its series and slice counts. `slices` has ``study_uid``,
    ``series_uid``, ``patient_id`` and the :data:`~rsna.data.labels.LABELS` columns."""
    groups = slices.groupby("study_uid", sort=True)
    table = groups[list(LABELS)].max()
    table.insert(0, "slices", groups.size())
    table.insert(0, "series", groups["series_uid"].nunique())
    table.insert(0, "patient_id", groups["patient_id"].first())
    return table
