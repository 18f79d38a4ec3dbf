"""The label table: Kaggle's long ``ID,Label`` CSV <-> one wide row per image.

``stage_2_train.csv`` has six rows per image, ``ID_<hex>_<subtype>,<0|1>``. The wide table
is indexed by image ID (``ID_<hex>``, the DICOM file's stem and its SOPInstanceUID) and
has the six columns of :data:`LABELS`, int8.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rsna.errors import DataWarning, RsnaError

__all__ = [
    "ANY",
    "LABELS",
    "SHORT",
    "SUBTYPES",
    "LabelError",
    "check_image_id",
    "image_path",
    "prior",
    "read_labels",
    "to_long",
]

#: The six targets, in the order of Kaggle's sample submission. Defined here only.
LABELS: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
SUBTYPES: tuple[str, ...] = LABELS[:-1]
ANY = "any"
#: The usual abbreviations, for plots.
SHORT: dict[str, str] = {
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
    "any": "any",
}

_IMAGE_ID = re.compile(r"ID_[0-9a-f]+")


class LabelError(RsnaError):
    """A label file or image ID is malformed."""


def check_image_id(image_id: str, *, where: str = "") -> str:
    """Return `image_id` if it is ``ID_`` plus lowercase hex; raise otherwise.

    Image IDs become file names, so anything else (``../``, spaces, upper case) is
    refused before it reaches a path.
    """
    if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
        prefix = f"{where}: " if where else ""
        raise LabelError(f"{prefix}image ID must match ^ID_[0-9a-f]+$. Received: {image_id!r}")
    return image_id


def image_path(directory: str | os.PathLike[str], image_id: str, *, suffix: str = ".dcm") -> Path:
    """The file of `image_id` in `directory`, after checking the ID."""
    return Path(directory) / f"{check_image_id(image_id)}{suffix}"


def read_labels(csv: str | os.PathLike[str]) -> pd.DataFrame:
    """Read Kaggle's long label CSV into the wide table.

    Exact duplicate rows are dropped, with a :class:`DataWarning`; their count is in
    ``attrs["duplicate_rows_dropped"]`` and the images in ``attrs["duplicate_images"]``.
    Blank lines are skipped, with a warning and ``attrs["blank_lines_skipped"]``; line
    numbers in errors count them.

    Raises:
        LabelError: a wrong header, a malformed ID, a label other than 0/1, duplicate
            rows that disagree, or an image without all six rows. The message names
            the file and the line.
    """
    path = Path(csv)
    try:  # blank lines are kept here, so that row k is line k + 2 of the file
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read label CSV ({exc})") from exc
    if list(df.columns) != ["ID", "Label"]:
        raise LabelError(
            f"{path}: header must be 'ID,Label'. Received: {','.join(map(str, df.columns))}"
        )
    blank = df.fillna("").eq("").all(axis=1)
    if blank.any():
        warnings.warn(f"{path}: skipped {int(blank.sum())} blank lines", DataWarning, stacklevel=2)
        df = df[~blank]
    if df.empty:
        raise LabelError(f"{path}: no label rows after the header")
    long = _split_ids(df, path)
    long["label"] = _parse_labels(df, path)
    dropped = _duplicate_rows(long, path)
    duplicate_images = sorted(set(long["image_id"].iloc[dropped]))
    wide = _pivot(long.drop(index=long.index[dropped]), path)
    wide.attrs["duplicate_rows_dropped"] = int(dropped.size)
    wide.attrs["blank_lines_skipped"] = int(blank.sum())
    wide.attrs["duplicate_images"] = duplicate_images
    if dropped.size:
        warnings.warn(
            f"{path}: dropped {dropped.size} duplicated rows of "
            f"{len(duplicate_images)} images (they agree with the kept rows)",
            DataWarning,
            stacklevel=2,
        )
    return wide


def _line(path: Path, row: int) -> str:
    return f"{path}, line {row + 2}"  # +1 for the header, +1 for counting from 1


def _split_ids(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    parts = df["ID"].str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2:
        parts = parts.reindex(columns=[0, 1])
    image_ok = parts[0].str.fullmatch(_IMAGE_ID.pattern).fillna(False).astype(bool)
    bad = ~(image_ok & parts[1].isin(LABELS))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelError(
            f"{_line(path, df.index[row])}: `ID` must be ID_<hex>_<subtype> with subtype in {LABELS}. "
            f"Received: {df['ID'].iloc[row]!r}"
        )
    return pd.DataFrame({"image_id": parts[0], "subtype": parts[1]})


def _parse_labels(df: pd.DataFrame, path: Path) -> np.ndarray:
    values = pd.to_numeric(df["Label"], errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelError(
            f"{_line(path, df.index[row])}: `Label` must be 0 or 1. "
            f"Received: Label={df['Label'].iloc[row]!r} for {df['ID'].iloc[row]}"
        )
    return values.to_numpy().astype(np.int8)


def _duplicate_rows(long: pd.DataFrame, path: Path) -> np.ndarray:
    """Positions of rows that repeat an earlier (image, subtype) pair; raise if they disagree."""
    repeated = long.duplicated(["image_id", "subtype"], keep=False)
    if not repeated.any():
        return np.array([], dtype=np.int64)
    groups = long[repeated].groupby(["image_id", "subtype"], sort=False)["label"]
    conflicting = groups.nunique() > 1
    if conflicting.any():
        image_id, subtype = conflicting[conflicting].index[0]
        rows = long.index[(long["image_id"] == image_id) & (long["subtype"] == subtype)]
        lines = ", ".join(str(r + 2) for r in rows)
        raise LabelError(
            f"{path}, lines {lines}: duplicate rows for {image_id}_{subtype} disagree "
            f"(labels {sorted(long.loc[rows, 'label'].tolist())})"
        )
    return np.flatnonzero(long.duplicated(["image_id", "subtype"], keep="first").to_numpy())


def _pivot(long: pd.DataFrame, path: Path) -> pd.DataFrame:
    wide = long.pivot(index="image_id", columns="subtype", values="label")
    wide = wide.reindex(columns=list(LABELS))
    missing = wide.isna()
    if missing.to_numpy().any():
        image_id = missing.any(axis=1).idxmax()
        absent = [c for c in LABELS if missing.at[image_id, c]]
        raise LabelError(f"{path}: image {image_id} has no row for subtype(s) {absent}")
    wide = wide.astype(np.int8)
    wide.index.name = "image_id"
    wide.columns.name = None
    return wide


def to_long(wide: pd.DataFrame, *, columns: Sequence[str] = LABELS) -> pd.DataFrame:
    """The inverse of :func:`read_labels`: Kaggle's ``ID,Label`` rows, six per image.

    Works for 0/1 labels and for predicted probabilities alike; rows follow the
    index order, and within an image the order of `columns`.

    Raises:
        LabelError: a column is missing or an index entry is not an image ID.
    """
    absent = [c for c in columns if c not in wide.columns]
    if absent:
        raise LabelError(
            f"`wide` is missing label column(s) {absent}. Received: {list(wide.columns)}"
        )
    ids = wide.index.astype(str)
    bad = ~ids.str.fullmatch(_IMAGE_ID.pattern)
    if bad.any():
        check_image_id(ids[np.flatnonzero(bad)[0]], where="`wide` index")
    n, k = len(wide), len(columns)
    long_ids = np.repeat(ids.to_numpy(dtype=object), k) + np.tile(
        np.array([f"_{c}" for c in columns], dtype=object), n
    )
    values = wide[list(columns)].to_numpy().reshape(-1)
    return pd.DataFrame({"ID": long_ids.astype(str), "Label": values})


def prior(labels: pd.DataFrame) -> pd.Series:
    """Per-label positive rate: the constant prediction a model must beat."""
    return labels[list(LABELS)].mean().astype(np.float64)
