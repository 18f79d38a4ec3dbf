"""A Kaggle submission that cannot be rejected: checked, clipped, written atomically.

:func:`write_submission` takes wide predictions (one row per image, the six
:data:`~rsna.data.labels.LABELS` columns) and the sample submission. It refuses to write
anything unless

* the predictions cover exactly the sample's images, once each;
* every value is a finite probability in [0, 1];
* the result has exactly the sample's rows, six per image, in the sample's order.

Probabilities are then clipped to ``[clip, 1 - clip]`` (default 1e-5): one confident
mistake then costs at most -log(1e-5) = 11.5 instead of the metric's clip value.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files
from rsna.data.labels import LABELS
from rsna.errors import RsnaError

__all__ = [
    "DEFAULT_CLIP",
    "SubmissionError",
    "build_submission",
    "sample_image_ids",
    "validate_submission",
    "write_submission",
]

DEFAULT_CLIP = 1e-5


class SubmissionError(RsnaError):
    """The submission would be invalid; nothing was written."""


def sample_image_ids(sample_csv: str | os.PathLike[str]) -> pd.Index:
    """The images of a sample submission, in order, after checking its rows."""
    sample = _read_sample(sample_csv)
    return pd.Index(sample["ID"].str.rsplit("_", n=1).str[0].unique(), name="image_id")


def _read_id_label(path: Path, what: str) -> pd.DataFrame:
    """An ``ID,Label`` CSV, or a SubmissionError naming the file."""
    try:  # blank lines are kept, so that row k is line k + 2 of the file
        frame = pd.read_csv(path, dtype={"ID": str}, skip_blank_lines=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SubmissionError(f"{path}: cannot read {what} ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise SubmissionError(
            f"{path}: {what} must be UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    if list(frame.columns) != ["ID", "Label"]:
        raise SubmissionError(
            f"{path}: header must be 'ID,Label'. Received: {','.join(map(str, frame.columns))}"
        )
    blank = frame.isna().all(axis=1)
    if blank.any():
        line = int(np.flatnonzero(blank.to_numpy())[0]) + 2
        raise SubmissionError(f"{path}, line {line}: a blank line in {what}")
    empty = frame["ID"].isna()
    if empty.any():
        line = int(np.flatnonzero(empty.to_numpy())[0]) + 2
        raise SubmissionError(f"{path}, line {line}: an empty ID in {what}")
    return frame


def _read_sample(sample_csv: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(sample_csv)
    sample = _read_id_label(path, "the sample submission")
    ids = sample["ID"].str.rsplit("_", n=1, expand=True)
    if ids.shape[1] != 2 or not ids[1].isin(LABELS).all():
        raise SubmissionError(f"{path}: every ID must end in one of {LABELS}")
    counts = ids.groupby(0)[1].agg(["size", "nunique"])
    bad = counts[(counts["size"] != len(LABELS)) | (counts["nunique"] != len(LABELS))]
    if len(bad):
        raise SubmissionError(
            f"{path}: image {bad.index[0]} does not have exactly one row per label"
        )
    return sample


def build_submission(
    predictions: pd.DataFrame, sample_csv: str | os.PathLike[str], *, clip: float = DEFAULT_CLIP
) -> pd.DataFrame:
    """Kaggle's long ``ID,Label`` rows in the sample's order, after every check.

    Raises:
        SubmissionError: what is wrong, with an example image.
    """
    if not 0 < clip < 0.5:
        raise SubmissionError(f"`clip` must be in (0, 0.5). Received: clip={clip}")
    sample = _read_sample(sample_csv)
    absent = [c for c in LABELS if c not in predictions.columns]
    if absent:
        raise SubmissionError(f"predictions lack label column(s) {absent}")
    if predictions.index.has_duplicates:
        raise SubmissionError(
            f"image {predictions.index[predictions.index.duplicated()][0]} is predicted twice"
        )
    images = pd.Index(sample["ID"].str.rsplit("_", n=1).str[0].unique())
    missing, extra = images.difference(predictions.index), predictions.index.difference(images)
    if len(missing):
        raise SubmissionError(
            f"{len(missing)} images of the sample have no prediction, e.g. {missing[0]}"
        )
    if len(extra):
        raise SubmissionError(
            f"{len(extra)} predicted images are not in the sample, e.g. {extra[0]}"
        )
    values = predictions[list(LABELS)].to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise SubmissionError(
            f"prediction for {predictions.index[row]}_{LABELS[col]} must be a probability in [0, 1]. "
            f"Received: {float(values[row, col])!r} ({int(bad.sum())} bad values in all)"
        )
    clipped = pd.DataFrame(
        np.clip(values, clip, 1 - clip), index=predictions.index, columns=list(LABELS)
    )
    stacked = clipped.stack()
    stacked.index = [f"{image}_{label}" for image, label in stacked.index]
    labels = stacked.reindex(sample["ID"]).to_numpy()
    if np.isnan(labels).any():  # cannot happen after the checks above; never write a hole
        raise SubmissionError("internal error: a sample row got no value")
    return pd.DataFrame({"ID": sample["ID"].to_numpy(), "Label": labels})


def write_submission(
    predictions: pd.DataFrame,
    sample_csv: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    clip: float = DEFAULT_CLIP,
) -> Path:
    """Check, clip and write ``submission.csv`` atomically.

    Raises:
        SubmissionError: nothing is written; the message says what is wrong.
    """
    frame = build_submission(predictions, sample_csv, clip=clip)
    with files.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.7g")
    return Path(path)


def validate_submission(
    path: str | os.PathLike[str], sample_csv: str | os.PathLike[str]
) -> pd.DataFrame:
    """Check an existing submission file against the sample; return it.

    Raises:
        SubmissionError: wrong header, a different ID list, or values that are not
            probabilities.
    """
    path = Path(path)
    sample = _read_sample(sample_csv)
    frame = _read_id_label(path, "the submission")
    repeated = frame["ID"].duplicated(keep=False)
    if repeated.any():
        first = frame.loc[repeated, "ID"].iloc[0]
        lines = [str(i + 2) for i in np.flatnonzero((frame["ID"] == first).to_numpy())]
        raise SubmissionError(
            f"{path}: ID {first} appears {len(lines)} times (lines {', '.join(lines)}); "
            f"{int(repeated.sum())} rows repeat an ID in all"
        )
    if len(frame) != len(sample) or set(frame["ID"]) != set(sample["ID"]):
        missing = sorted(set(sample["ID"]) - set(frame["ID"]))[:1]
        extra = sorted(set(frame["ID"]) - set(sample["ID"]))[:1]
        raise SubmissionError(
            f"{path}: IDs differ from the sample ({len(frame)} rows, sample {len(sample)}; "
            f"missing e.g. {missing}, extra e.g. {extra})"
        )
    labels = pd.to_numeric(frame["Label"], errors="coerce")
    bad = labels.isna() | (labels < 0) | (labels > 1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise SubmissionError(
            f"{path}, line {row + 2}: Label must be a probability. Received: {frame['Label'].iloc[row]!r}"
        )
    return frame
