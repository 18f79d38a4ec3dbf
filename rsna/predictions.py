"""Test predictions: which images to predict, the fold ensemble, and the written result.

Both stages predict the sample submission's images with every fold model; this module
holds what they share, without Keras:

* :func:`test_images`: the sample's images, split into those with a DICOM file and
  those without (which get the train prior);
* :func:`combine`: the fold ensemble, a mean of probabilities (``mean``) or of logits
  (``logit_mean``, a geometric-style mean that rewards agreement);
* :func:`assemble`: the ensemble of the present images plus the prior for unreadable
  and missing ones. An image given the prior is always listed in the report, never
  filled silently;
* :func:`write_predictions`: ``submission.csv`` through the validated writer, the wide
  ``predictions_test.csv`` and ``predict_report.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.data.labels import LABELS, prior
from rsna.data.metadata import data_dir, read_metadata, read_prepared_labels
from rsna.data.paths import find_competition
from rsna.errors import RsnaError
from rsna.metrics import logit, sigmoid
from rsna.submission import sample_image_ids, write_submission

__all__ = [
    "ENSEMBLES",
    "PredictError",
    "PredictResult",
    "TestImages",
    "assemble",
    "combine",
    "test_images",
    "with_prior",
    "write_predictions",
]

#: The ways :func:`combine` averages fold predictions.
ENSEMBLES = ("mean", "logit_mean")


class PredictError(RsnaError):
    """Nothing to predict with, or nothing to predict."""


@dataclass(frozen=True)
class PredictResult:
    predictions: pd.DataFrame
    submission: Path
    report: dict


@dataclass(frozen=True)
class TestImages:
    """The images to predict: the sample submission's, split by whether they have a file."""

    sample_csv: Path
    images: pd.Index  # every image of the sample, in its order
    present: list[str]  # those with a DICOM file in the prepared metadata
    missing: list[str]  # those without one: they get the prior
    metadata: pd.DataFrame
    prior: np.ndarray  # per-label mean of the training labels


def test_images(work_dir: str | os.PathLike[str]) -> TestImages:
    """The sample submission's images for a prepared work folder.

    Raises:
        PredictError: the competition has no sample submission.
    """
    competition = find_competition(data_dir(work_dir))
    if competition.sample_csv is None:
        raise PredictError(f"{competition.root}: no stage_2_sample_submission.csv")
    images = sample_image_ids(competition.sample_csv)
    metadata = read_metadata(work_dir)
    rates = prior(read_prepared_labels(work_dir)).to_numpy()
    present = [i for i in images if i in metadata.index]
    missing = sorted(set(images) - set(present))
    return TestImages(competition.sample_csv, images, present, missing, metadata, rates)


def combine(predictions: list[np.ndarray], *, how: str = "mean") -> np.ndarray:
    """Average fold predictions: probabilities (``mean``) or logits (``logit_mean``)."""
    stacked = np.stack(predictions)
    if how == "mean":
        return stacked.mean(axis=0)
    if how == "logit_mean":
        return sigmoid(logit(stacked).mean(axis=0))
    raise PredictError(f"`ensemble` must be one of {ENSEMBLES}. Received: {how!r}")


def with_prior(frame: pd.DataFrame, image_ids: list[str], rates: np.ndarray) -> pd.DataFrame:
    """Set the rows of `image_ids` to the prior `rates`."""
    if image_ids:
        frame.loc[image_ids, list(LABELS)] = np.tile(rates, (len(image_ids), 1))
    return frame


def assemble(
    test: TestImages, per_fold: list[np.ndarray], *, how: str, unreadable: list[str]
) -> pd.DataFrame:
    """Fold predictions of the present images, averaged; the prior for unreadable and missing ones."""
    predictions = pd.DataFrame(np.nan, index=test.images, columns=list(LABELS))
    predictions.loc[test.present] = combine(per_fold, how=how)
    predictions = with_prior(predictions, sorted(set(unreadable) | set(test.missing)), test.prior)
    predictions.index.name = "image_id"
    return predictions


def write_predictions(
    predictions: pd.DataFrame,
    test: TestImages,
    folder: str | os.PathLike[str],
    *,
    clip: float,
    report: dict,
    wide: bool = True,
) -> PredictResult:
    """Write ``submission.csv`` (validated, clipped), ``predict_report.json`` and, with
    `wide`, ``predictions_test.csv`` in `folder`.

    Raises:
        rsna.submission.SubmissionError: the result would be invalid (nothing written).
    """
    folder = Path(folder)
    submission = folder / runs.SUBMISSION
    if wide:
        files.write_csv(predictions, folder / runs.PREDICTIONS_TEST, index=True)
    write_submission(predictions, test.sample_csv, submission, clip=clip)
    report = {**report, "submission": str(submission)}
    files.write_json(folder / runs.PREDICT_REPORT, report)
    return PredictResult(predictions, submission, report)
