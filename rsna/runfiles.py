"""The one reader of a run's prediction files: every value checked where it is read.

A run's ``fold_<k>/oof.csv`` and ``predictions_test.csv`` are wide (``image_id`` and the
six :data:`~rsna.data.labels.LABELS`); its ``submission.csv`` is Kaggle's long
``ID,Label``. Blending and stacking read other people's runs, so nothing is trusted: a
missing column, a repeated or malformed image ID, a label that is not one of the six,
text, NaN, infinity or a value outside [0, 1] is a :class:`RunFileError` naming the file,
the line and the value. NumPy/pandas only.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from rsna.data.labels import LABELS, LabelError, check_image_id
from rsna.errors import RsnaError

__all__ = ["RunFileError", "read_long_predictions", "read_wide_predictions"]


class RunFileError(RsnaError):
    """A run's prediction file is unreadable or holds an impossible value."""


def _table(path: Path) -> pd.DataFrame:
    """Every cell of a CSV as text (nothing converted yet), every row as long as the
    header; or the reason it is not such a table."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunFileError(f"{path}: missing") from None
    except UnicodeDecodeError as exc:
        raise RunFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise RunFileError(f"{path}: not a CSV table ({exc})") from None
    if not rows:
        raise RunFileError(f"{path}: empty (no header)")
    header, body = rows[0], rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise RunFileError(
                f"{path}: not a CSV table: line {line} has {len(row)} fields, the header {len(header)}"
            )
    return pd.DataFrame(body, columns=header, dtype=str)


def _probabilities(path: Path, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The `columns` as float64, every value a finite probability; else the first bad cell."""
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raw = frame[columns[col]].iloc[row]
        raise RunFileError(
            f"{path}: line {row + 2}, column {columns[col]}: a prediction must be a number in "
            f"[0, 1]. Received: {raw!r} ({int(bad.sum())} such values in the file)"
        )
    return values


def _well_formed(path: Path, ids: pd.Series, *, what: str) -> None:
    """Every one of `ids` an image ID (``ID_`` and lowercase hex), else the first line that is not."""
    for line, image_id in enumerate(ids, start=2):
        try:
            check_image_id(image_id)
        except LabelError:
            raise RunFileError(f"{path}: line {line}: {what} must be ID_ and lowercase hex. Received: {image_id!r}") from None  # fmt: skip


def _no_repeats(path: Path, ids: pd.Series, *, what: str) -> None:
    """No value of `ids` twice, else the first repeated one with both its lines."""
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):
        lines = [int(i) + 2 for i in repeated.index[:2]]
        raise RunFileError(f"{path}: {what} {repeated.iloc[0]!r} appears more than once (lines {lines[0]} and {lines[1]})")  # fmt: skip


def read_wide_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """``image_id`` and the six labels' probabilities (an OOF or test file), checked.

    Raises:
        RunFileError: naming the file, the line and the value.
    """
    path = Path(path)
    frame = _table(path)
    expected = ["image_id", *LABELS]
    if list(frame.columns) != expected:
        raise RunFileError(f"{path}: the columns must be {expected}. Received: {list(frame.columns)}")
    if frame.empty:
        raise RunFileError(f"{path}: no rows")
    _well_formed(path, frame["image_id"], what="image_id")
    _no_repeats(path, frame["image_id"], what="image_id")
    values = _probabilities(path, frame, list(LABELS))
    return pd.DataFrame(values, index=pd.Index(frame["image_id"], name="image_id"), columns=list(LABELS))


def read_long_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A Kaggle ``ID,Label`` file (``ID_<hex>_<label>``), checked, as the wide frame.

    Raises:
        RunFileError: a wrong header, an ID without one of the six labels, a repeated
            row, an image without all six, or a value that is not a probability.
    """
    path = Path(path)
    frame = _table(path)
    if list(frame.columns) != ["ID", "Label"]:
        raise RunFileError(f"{path}: the header must be ID,Label. Received: {list(frame.columns)}")
    if frame.empty:
        raise RunFileError(f"{path}: no rows")
    parts = frame["ID"].str.rsplit("_", n=1, expand=True).reindex(columns=[0, 1])
    unknown = ~parts[1].isin(LABELS)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise RunFileError(
            f"{path}: line {row + 2}: the ID must end in one of {list(LABELS)}. Received: {frame['ID'].iloc[row]!r}"
        )
    _no_repeats(path, frame["ID"], what="ID")
    _well_formed(path, parts[0], what="the image ID")
    values = _probabilities(path, frame, ["Label"])[:, 0]
    long = pd.DataFrame({"image_id": parts[0], "label": parts[1], "p": values})
    wide = long.pivot(index="image_id", columns="label", values="p").reindex(columns=list(LABELS))
    incomplete = wide.index[wide.isna().any(axis=1)]
    if len(incomplete):
        missing = [c for c in LABELS if np.isnan(wide.at[incomplete[0], c])]
        raise RunFileError(f"{path}: image {incomplete[0]} has no rows for {missing} ({len(incomplete)} images lack some)")  # fmt: skip
    wide.columns.name = None
    return wide
