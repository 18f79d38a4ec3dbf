"""Prediction: test-time augmentation, the fold ensemble, and the test submission.

* TTA averages **probabilities** over the views in ``predict.tta`` (``none``, ``hflip``).
* The fold ensemble averages probabilities (``predict.ensemble = "mean"``, the default)
  or logits (``"logit_mean"``, a geometric-style mean that rewards agreement).
* An image whose pixels cannot be read, or whose file is missing, gets the train prior
  (per-label mean) for its six rows, and is listed by ID in ``predict_report.json``.
  It is never silently filled.

Models are loaded with ``safe_mode=True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rsna import files
from rsna.cache import CacheSpec
from rsna.config import Config
from rsna.errors import RsnaError
from rsna.generator import DataGenerator, cache_or_dicom
from rsna.labels import LABELS
from rsna.metadata import data_dir, read_metadata, read_prepared_labels
from rsna.models import load_model
from rsna.paths import find_competition
from rsna.submission import sample_image_ids, write_submission

BEST_MODEL = "best.keras"


class PredictError(RsnaError):
    """Nothing to predict with, or nothing to predict."""


def cache_spec(config: Config) -> CacheSpec:
    """The image spec of `config`: what a cache must hold to be used."""
    return CacheSpec(size=config.image.size, windows=config.image.windows, curve=config.image.curve)


def image_source(config: Config) -> dict[str, object]:
    """Generator source arguments: the cache when allowed and built, else the DICOMs."""
    if not config.data.cache:
        return {"work_dir": config.data.work_dir}
    return cache_or_dicom(config.data.work_dir, cache_spec(config))


def config_generator(config: Config, image_ids: list[str], labels=None, **options) -> DataGenerator:
    """A DataGenerator reading `config`'s images (cache or DICOMs, size, windows, context)."""
    return DataGenerator(
        image_ids,
        labels,
        **image_source(config),
        size=config.image.size,
        windows=config.image.windows,
        context=config.image.context,
        **options,
    )


def predict_views(
    model: keras.Model, image_ids: list[str], config: Config
) -> tuple[list, list[str]]:
    """The model's output for each TTA view of ``predict.tta``, and the unreadable IDs."""
    views, unreadable = [], []
    for view in config.predict.tta:
        gen = config_generator(
            config,
            image_ids,
            batch_size=config.predict.batch_size,
            to_fit=False,
            hflip=view == "hflip",
        )
        views.append(model.predict(gen, verbose=0))
        unreadable = sorted(set(gen.unreadable))
    return views, unreadable


def predict_images(
    model: keras.Model, image_ids: list[str], config: Config
) -> tuple[np.ndarray, list[str]]:
    """Probabilities (n, 6) averaged over the TTA views, and the unreadable IDs."""
    views, unreadable = predict_views(model, image_ids, config)
    return np.mean(views, axis=0, dtype=np.float64), unreadable


def combine(predictions: list[np.ndarray], *, how: str = "mean") -> np.ndarray:
    """Average fold predictions: probabilities (``mean``) or logits (``logit_mean``)."""
    stacked = np.stack(predictions)
    if how == "mean":
        return stacked.mean(axis=0)
    if how == "logit_mean":
        p = np.clip(stacked, 1e-7, 1 - 1e-7)
        logit = np.log(p / (1 - p)).mean(axis=0)
        return 1 / (1 + np.exp(-logit))
    raise PredictError(f"`ensemble` must be 'mean' or 'logit_mean'. Received: {how!r}")


def with_prior(frame: pd.DataFrame, image_ids: list[str], prior: np.ndarray) -> pd.DataFrame:
    """Set the rows of `image_ids` to the prior."""
    if image_ids:
        frame.loc[image_ids, list(LABELS)] = np.tile(prior, (len(image_ids), 1))
    return frame


def fold_models(config: Config) -> list[Path]:
    """The best checkpoint of every trained fold of `config`, in fold order."""
    paths = sorted(
        config.run_dir.glob(f"fold_*/{BEST_MODEL}"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    if not paths:
        raise PredictError(
            f"{config.run_dir}: no trained fold ({BEST_MODEL}); run `rsna train` first"
        )
    return paths


@dataclass(frozen=True)
class PredictResult:
    predictions: pd.DataFrame
    submission: Path
    report: dict


@dataclass(frozen=True)
class SampleImages:
    """The images to predict: the sample submission's, split by whether they have a file."""

    sample_csv: Path
    images: pd.Index  # every image of the sample, in its order
    present: list[str]  # those with a DICOM file in the prepared metadata
    missing: list[str]  # those without one: they get the prior
    metadata: pd.DataFrame
    prior: np.ndarray  # per-label mean of the training labels


def sample_images(config: Config) -> SampleImages:
    """The sample submission's images for a prepared work folder.

    Raises:
        PredictError: the competition has no sample submission.
    """
    competition = find_competition(data_dir(config.data.work_dir))
    if competition.sample_csv is None:
        raise PredictError(f"{competition.root}: no stage_2_sample_submission.csv")
    images = sample_image_ids(competition.sample_csv)
    metadata = read_metadata(config.data.work_dir)
    prior = read_prepared_labels(config.data.work_dir)[list(LABELS)].mean().to_numpy()
    present = [i for i in images if i in metadata.index]
    missing = sorted(set(images) - set(present))
    return SampleImages(competition.sample_csv, images, present, missing, metadata, prior)


def assemble(
    test: SampleImages, per_fold: list[np.ndarray], *, how: str, unreadable: list[str]
) -> pd.DataFrame:
    """Fold predictions of the present images, averaged; the prior for unreadable and missing ones."""
    predictions = pd.DataFrame(np.nan, index=test.images, columns=list(LABELS))
    predictions.loc[test.present] = combine(per_fold, how=how)
    predictions = with_prior(predictions, sorted(set(unreadable) | set(test.missing)), test.prior)
    predictions.index.name = "image_id"
    return predictions


def predict_test(config: Config, *, write: bool = True) -> PredictResult:
    """Predict the sample submission's images with every fold model; write the submission.

    Raises:
        PredictError: no trained folds, or no sample submission.
        rsna.submission.SubmissionError: the result would be invalid (nothing written).
    """
    start = time.perf_counter()
    test = sample_images(config)
    per_fold, unreadable = [], []
    models = fold_models(config)
    for path in models:
        probs, unreadable = predict_images(load_model(path), test.present, config)
        per_fold.append(probs)
        keras.backend.clear_session()
    predictions = assemble(test, per_fold, how=config.predict.ensemble, unreadable=unreadable)
    report = {
        "images": len(test.images),
        "folds": [p.parent.name for p in models],
        "tta": list(config.predict.tta),
        "ensemble": config.predict.ensemble,
        "unreadable_given_prior": sorted(unreadable),
        "missing_files_given_prior": test.missing,
        "prior": dict(zip(LABELS, test.prior.tolist(), strict=True)),
        "mean_prediction": predictions.mean().to_dict(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    submission = config.run_dir / "submission.csv"
    if write:
        files.write_csv(predictions, config.run_dir / "predictions_test.csv", index=True)
        write_submission(predictions, test.sample_csv, submission, clip=config.predict.clip)
        report["submission"] = str(submission)
        files.write_json(config.run_dir / "predict_report.json", report)
    return PredictResult(predictions, submission, report)
