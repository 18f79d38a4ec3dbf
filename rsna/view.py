"""``rsna view CONFIG --study UID``: one study as a radiologist reads it, through z.

The figure (:func:`rsna.plots.plot_study_slices`) shows the study's slices in z order,
each titled with its z, its labels where known and both stages' ``any`` probability,
above a strip of each stage's ``any`` and the labels along z, and the ``any`` saliency
of the most positive slices (:mod:`rsna.training.saliency`). The probabilities are the
run's own: the out-of-fold predictions for a training image (from the one fold model
that did not train on it), the test predictions for a test image (``predictions_test.csv``
for stage 1, ``stage2/submission.csv`` for stage 2). What a stage has not predicted is
left blank and said in the figure. The saliency is computed by the caller (``rsna
view`` does), so this module needs no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.config import Config
from rsna.data.labels import LABELS
from rsna.data.metadata import read_metadata, read_prepared_labels
from rsna.errors import RsnaError
from rsna.evaluate import read_fold_oof
from rsna.runfiles import read_long_predictions, read_wide_predictions

__all__ = [
    "VIEWS",
    "ViewError",
    "most_positive",
    "stage_predictions",
    "study_slices",
    "view_study",
]

#: The run's folder of study figures.
VIEWS = "views"


class ViewError(RsnaError):
    """The study is not in the work folder."""


def stage_predictions(config: Config, stage: int) -> pd.DataFrame:
    """Every probability `stage` of the run has made, by image ID: its fold OOFs and its
    test predictions; empty when the stage has predicted nothing."""
    folder = config.stage_dir(stage)
    parts = list(read_fold_oof(folder).values())
    test = folder / (runs.PREDICTIONS_TEST if stage == 1 else runs.SUBMISSION)
    if test.exists():
        parts.append(read_wide_predictions(test) if stage == 1 else read_long_predictions(test))
    if not parts:
        return pd.DataFrame(columns=list(LABELS), dtype=float)
    frame = pd.concat(parts)
    return frame[~frame.index.duplicated(keep="first")][list(LABELS)]


def study_slices(config: Config, study_uid: str) -> pd.DataFrame:
    """The study's slices in z order (by series, then slice index): their metadata, the
    labels where known (``label_<name>``, NaN for test images) and each stage's
    probabilities (``stage1_<name>``, ``stage2_<name>``, NaN where not predicted).

    Raises:
        ViewError: the study is not in the work folder's metadata.
    """
    metadata = read_metadata(config.data.work_dir)
    slices = metadata[metadata["study_uid"] == study_uid]
    if slices.empty:
        examples = ", ".join(sorted(metadata["study_uid"].unique())[:3])
        raise ViewError(
            f"`study` {study_uid!r} is not in {config.data.work_dir}/metadata.parquet; "
            f"e.g. {examples}"
        )
    slices = slices.sort_values(["series_uid", "slice_index"])
    labels = read_prepared_labels(config.data.work_dir).reindex(slices.index)
    frame = slices[["series_uid", "slice_index", "z", "split", "readable"]].copy()
    frame[[f"label_{c}" for c in LABELS]] = labels[list(LABELS)].to_numpy(np.float64)
    for stage in runs.STAGES:
        predicted = stage_predictions(config, stage).reindex(slices.index)
        frame[[f"stage{stage}_{c}" for c in LABELS]] = predicted.to_numpy(np.float64)
    frame.attrs.update(study_uid=study_uid, patient_id=str(slices["patient_id"].iloc[0]))
    return frame


def most_positive(slices: pd.DataFrame, *, n: int) -> list[str]:
    """The `n` readable slices of a study (:func:`study_slices`) with the highest stage-1
    ``any``, highest first."""
    ranked = slices.loc[slices["readable"].astype(bool), "stage1_any"].dropna()
    return ranked.nlargest(n).index.tolist()


def view_study(
    config: Config,
    study_uid: str,
    *,
    out: str | Path | None = None,
    max_slices: int = 48,
    explained: dict | None = None,
) -> Path:
    """Draw the study (:func:`study_slices`) with its windowed slices from the run's store
    (``data.cache = true``) or DICOMs, and the ``any`` saliency of the slices in
    `explained` (from :func:`rsna.training.saliency.any_saliency` of
    :func:`most_positive`). Write the PNG to `out` (default ``RUN/views/<study>.png``)
    and return its path.

    Raises:
        ViewError: the study is not in the work folder.
        rsna.data.cache.StoreMissing: ``data.cache = true`` and the store is not built.
    """
    from rsna.data.cache import ImageCache, complete_store
    from rsna.data.sources import DicomImages
    from rsna.plots import plot_study_slices

    slices = study_slices(config, study_uid)
    if config.data.cache:
        store = complete_store(config.data.work_dir, config.image.spec, config.codec)
        images = ImageCache(store, expect=config.image.spec)
    else:
        images = DicomImages(config.data.work_dir, config.image.spec)
    figure = plot_study_slices(images, slices, max_slices=max_slices, explained=explained)
    path = Path(out) if out else config.run_dir / VIEWS / f"{study_uid}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.save_figure(figure, path)
