"""``rsna postprocess --smooth``: a weighted rolling mean of a stage's predictions along z.

A bleed spans neighbouring slices, so a slice's prediction is pulled towards its
neighbours': each image's probability (or logit) becomes the weighted mean of the slices
``s - k .. s + k`` of its series by z, with the weights :data:`SMOOTHING` unless given.
The 2nd place's write-up reports that this took one model from 0.070 to 0.066; it is the
cheapest series model, and the one stage 2 must beat.

At a series' end the edge slice stands in for the missing ones (as in
:func:`rsna.data.series.neighbours`), and an image without a readable file neither is
smoothed nor pulls its neighbours (it holds the prior). The result is a run of its own,
in the stage folder's ``smoothed/``: ``fold_<k>/oof.csv`` by the stage's folds (so
``rsna evaluate`` and ``rsna blend`` read it like any stage) and a validated
``submission.csv``. Nothing is fitted, so its CV is as honest as the stage's. NumPy and
pandas only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.data.labels import LABELS
from rsna.data.series import neighbours
from rsna.errors import RsnaError
from rsna.metrics import logit, sigmoid
from rsna.runfiles import read_long_predictions, read_wide_predictions

__all__ = [
    "SMOOTHING",
    "SPACES",
    "SmoothError",
    "SmoothResult",
    "Space",
    "check_weights",
    "is_current",
    "parse_weights",
    "smooth_along_z",
    "smooth_stage",
    "source_files",
]

#: The weights over slices s-1, s, s+1 of the 2nd place's z-smoothing (RSNA 2019).
SMOOTHING: tuple[float, ...] = (0.6, 1.8, 0.6)
#: What is averaged: the probabilities (a rolling mean of predictions) or the logits.
Space = Literal["probability", "logit"]
SPACES: tuple[str, ...] = get_args(Space)


class SmoothError(RsnaError):
    """Weights that cannot smooth, or a stage without the predictions to smooth."""


@dataclass(frozen=True)
class SmoothResult:
    folder: Path  # the smoothed run: fold_<k>/oof.csv, submission.csv
    oof: pd.DataFrame
    test: pd.DataFrame


def check_weights(weights: Sequence[float]) -> np.ndarray:
    """`weights` as a float array summing to 1.

    Raises:
        SmoothError: not an odd count, a negative or non-finite weight, or all zero.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) % 2 == 0:
        raise SmoothError(
            "`smooth` must be an odd number of weights, centred on the slice. "
            f"Received: smooth={list(weights)}"
        )
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise SmoothError(
            "`smooth` weights must be finite, >= 0 and not all zero. "
            f"Received: smooth={list(weights)}"
        )
    return w / w.sum()


def parse_weights(text: str) -> tuple[float, ...]:
    """``"0.6,1.8,0.6"`` -> (0.6, 1.8, 0.6), checked by :func:`check_weights`.

    Raises:
        SmoothError: a part that is not a number, or weights that cannot smooth.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        raise SmoothError(
            f"`smooth` must be comma-separated numbers such as 0.6,1.8,0.6. Received: {text!r}"
        ) from None
    check_weights(weights)
    return weights


def smooth_along_z(
    predictions: pd.DataFrame,
    slices: pd.DataFrame,
    *,
    weights: Sequence[float] = SMOOTHING,
    space: Space = "probability",
) -> pd.DataFrame:
    """Each image's LABELS, the weighted mean of its series' slices around it by z.

    Args:
        predictions: image ID -> LABELS probabilities; the rows to smooth.
        slices: ``series_uid`` and ``slice_index`` (metadata) per image ID, covering
            `predictions`; an optional ``readable`` column marks images whose value is
            the prior, which are left as they are and never used as neighbours.
        weights: an odd number of weights over slices ``s - k .. s + k``.
        space: average probabilities, or logits (then mapped back by the sigmoid).

    Returns:
        The smoothed probabilities, in `predictions`' order.
    """
    w = check_weights(weights)
    if space not in SPACES:
        raise SmoothError(f"`space` must be one of {SPACES}. Received: space={space!r}")
    ids = predictions.index
    table = neighbours(slices, list(ids), context=len(w) // 2)
    values = predictions[list(LABELS)].to_numpy(np.float64)
    values = logit(values) if space == "logit" else values
    readable = _readable(slices, ids)
    rows = ids.get_indexer(table.ravel()).reshape(table.shape)
    centre = np.arange(len(ids))[:, None]
    usable = (rows >= 0) & readable[np.clip(rows, 0, None)]
    rows = np.where(usable, rows, centre)  # a missing or unreadable neighbour: the slice itself
    smoothed = np.einsum("nk,nkl->nl", np.broadcast_to(w, rows.shape), values[rows])
    smoothed[~readable] = values[~readable]
    out = sigmoid(smoothed) if space == "logit" else smoothed
    return pd.DataFrame(out, index=ids, columns=list(LABELS)).rename_axis(ids.name or "image_id")


def source_files(stage_folder: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """The fingerprints of the files a smoothing reads (every fold's OOF and the
    submission), by path below `stage_folder`: a later change to any makes it stale."""
    folder = Path(stage_folder)
    paths = [p / runs.OOF for p in runs.fold_dirs(folder, holding=runs.OOF).values()]
    return {
        str(p.relative_to(folder)): files.fingerprint(p)
        for p in [*paths, folder / runs.SUBMISSION]
        if p.exists()
    }


def is_current(stage_folder: str | os.PathLike[str]) -> bool:
    """Was ``<stage_folder>/smoothed`` made from the stage's present predictions?"""
    report = Path(stage_folder) / runs.SMOOTHED / runs.PREDICT_REPORT
    if not report.is_file():
        return False
    return files.read_json(report).get("source_files") == source_files(stage_folder)


def _readable(slices: pd.DataFrame, ids: pd.Index) -> np.ndarray:
    """Per image of `ids`: does it have a readable file (metadata's ``readable``; True
    where the column or the image is absent)?"""
    if "readable" not in slices.columns:
        return np.ones(len(ids), bool)
    return slices["readable"].reindex(ids).fillna(True).to_numpy(bool)


def smooth_stage(
    stage_folder: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    weights: Sequence[float] = SMOOTHING,
    space: Space = "probability",
    clip: float = 1e-5,
) -> SmoothResult:
    """Smooth a stage's OOF (fold by fold) and test predictions, and write them as a run in
    ``<stage_folder>/smoothed``.

    Raises:
        SmoothError: bad weights, or the stage has no OOF predictions or no submission.
    """
    from rsna.predictions import test_images
    from rsna.submission import write_submission

    check_weights(weights)
    folder = Path(stage_folder)
    parts = {
        k: read_wide_predictions(p / runs.OOF)
        for k, p in runs.fold_dirs(folder, holding=runs.OOF).items()
    }
    if not parts:
        raise SmoothError(f"{folder}: no fold_*/{runs.OOF}; train the stage's folds first")
    if not (folder / runs.SUBMISSION).is_file():
        raise SmoothError(f"{folder}: no {runs.SUBMISSION}; run `rsna predict` first")
    predicted = read_long_predictions(folder / runs.SUBMISSION)
    test = test_images(work_dir)
    metadata = test.metadata
    out = folder / runs.SMOOTHED
    oof = smooth_along_z(pd.concat(parts.values()), metadata, weights=weights, space=space)
    present = predicted.index[predicted.index.isin(metadata.index)]
    smoothed_test = predicted.copy()
    smoothed_test.loc[present] = smooth_along_z(
        predicted.loc[present], metadata, weights=weights, space=space
    )
    with files.atomic_folder(out) as tmp:
        for k, part in parts.items():
            files.write_csv(oof.loc[part.index], runs.fold_dir(tmp, k) / runs.OOF, index=True)
        files.write_csv(smoothed_test, tmp / runs.PREDICTIONS_TEST, index=True)
        write_submission(smoothed_test, test.sample_csv, tmp / runs.SUBMISSION, clip=clip)
        files.write_json(
            tmp / runs.PREDICT_REPORT,
            {
                "smoothed": str(stage_folder),
                "weights": [float(v) for v in weights],
                "space": space,
                "images": len(smoothed_test),
                "submission": str(out / runs.SUBMISSION),
                "unreadable_kept_as_they_were": int((~_readable(metadata, present)).sum()),
                "source_files": source_files(stage_folder),
            },
        )
    return SmoothResult(out, oof, smoothed_test)
