"""Cross-validation folds grouped by patient and balanced on the labels.

A patient's slices, across all of their studies, always land in the same fold: splitting
by image or by study leaks a patient between training and validation. Where PatientID is
missing, the study stands in for the patient, with a warning.

Balance comes from sklearn's :class:`~sklearn.model_selection.StratifiedGroupKFold`. Each
image's stratum is its rarest positive label (0 for negative images), so the folds
balance `any` and the rare subtypes (epidural first) at once.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from rsna import files
from rsna.data.labels import LABELS, SUBTYPES, prior
from rsna.errors import DataWarning, RsnaError

__all__ = [
    "FOLDS_FILE",
    "FoldError",
    "check_no_leak",
    "fold_table",
    "make_folds",
    "patient_groups",
    "rarest_label",
    "read_folds",
    "write_folds",
]

FOLDS_FILE = "folds.csv"


class FoldError(RsnaError):
    """Folds cannot be made, or they leak a patient."""


def make_folds(
    metadata: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    n_folds: int = 5,
    seed: int = 0,
) -> pd.Series:
    """Assign every labelled image to a fold in ``0 .. n_folds - 1``.

    Args:
        metadata: the table of :mod:`rsna.data.metadata` (needs ``patient_id``, ``study_uid``).
        labels: the wide labels, indexed by image ID.
        n_folds: number of folds, at least 2.
        seed: seeds the split; the same seed gives the same folds.

    Returns:
        An int8 Series named ``fold``, indexed by image ID, in the order of `labels`.

    Raises:
        FoldError: bad options, labelled images without metadata, too few patients, or
            (a bug) a patient in two folds.
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise FoldError(f"`n_folds` must be an integer >= 2. Received: n_folds={n_folds!r}")
    missing = labels.index.difference(metadata.index)
    if len(missing):
        raise FoldError(
            f"{len(missing)} labelled images have no metadata, e.g. {missing[0]}; rerun `rsna prepare`"
        )
    groups = patient_groups(metadata.loc[labels.index])
    n_groups = groups.nunique()
    if n_groups < n_folds:
        raise FoldError(
            f"`n_folds` must not exceed the number of patients ({n_groups}). Received: n_folds={n_folds}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, np.int8)
    strata = _merge_small_strata(rarest_label(labels), n_folds)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), strata, groups)):
        folds[held_out] = fold
    result = pd.Series(folds, index=labels.index, name="fold")
    check_no_leak(result, groups)
    return result


def patient_groups(metadata: pd.DataFrame) -> pd.Series:
    """PatientID per image; the study (then the image) where PatientID is missing."""
    patient = metadata["patient_id"].astype(str)
    study = metadata["study_uid"].astype(str)
    no_patient = patient == ""
    if no_patient.any():
        warnings.warn(
            f"{int(no_patient.sum())} images have no PatientID; grouping them by study instead",
            DataWarning,
            stacklevel=3,
        )
    groups = patient.where(~no_patient, "study:" + study)
    no_study = no_patient & (study == "")
    return groups.where(~no_study, "image:" + metadata.index.to_series().astype(str))


def rarest_label(labels: pd.DataFrame) -> np.ndarray:
    """Stratum per image: 0 if negative, else 1 + rank of its rarest positive subtype."""
    rates = prior(labels)[list(SUBTYPES)].to_numpy()
    order = np.argsort(rates, kind="stable")  # rarest first
    positive = labels[list(SUBTYPES)].to_numpy()[:, order].astype(bool)
    first = positive.argmax(axis=1)
    return np.where(positive.any(axis=1), first + 1, 0)


def _merge_small_strata(strata: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold strata with fewer images than folds into the commonest positive stratum."""
    values, counts = np.unique(strata, return_counts=True)
    positive = [(c, v) for v, c in zip(values, counts, strict=True) if v > 0 and c >= n_folds]
    target = max(positive)[1] if positive else 0
    small = [v for v, c in zip(values, counts, strict=True) if v > 0 and c < n_folds]
    return np.where(np.isin(strata, small), target, strata)


def check_no_leak(folds: pd.Series, groups: pd.Series) -> None:
    """Raise if any group (patient) has images in more than one fold."""
    per_group = folds.groupby(groups.loc[folds.index].to_numpy()).nunique()
    leaking = per_group[per_group > 1]
    if len(leaking):
        raise FoldError(
            f"{len(leaking)} patients are in more than one fold, e.g. {leaking.index[0]}"
        )


def fold_table(folds: pd.Series, labels: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and positive rate per label, per fold and overall."""
    frame = labels.loc[folds.index, list(LABELS)].astype(float)
    frame["patient"] = patient_groups(metadata.loc[folds.index])
    rows = {}
    for fold, part in frame.groupby(folds.to_numpy()):
        rows[f"fold {fold}"] = _summary(part)
    rows["all"] = _summary(frame)
    return pd.DataFrame(rows).T


def _summary(part: pd.DataFrame) -> pd.Series:
    return pd.Series(
        {
            "images": len(part),
            "patients": part["patient"].nunique(),
            **prior(part).to_dict(),
        }
    )


def write_folds(folds: pd.Series, metadata: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``image_id,fold,patient_id`` atomically."""
    frame = pd.DataFrame({"fold": folds, "patient_id": metadata.loc[folds.index, "patient_id"]})
    frame.index.name = "image_id"
    return files.write_csv(frame, path, index=True)


def read_folds(path: str | os.PathLike[str]) -> pd.Series:
    """Read a folds file written by :func:`write_folds`."""
    path = Path(path)
    if not path.exists():
        raise FoldError(f"{path}: missing; run `rsna folds` first")
    frame = pd.read_csv(path, index_col="image_id", dtype={"image_id": str, "patient_id": str})
    if "fold" not in frame.columns:
        raise FoldError(f"{path}: no `fold` column. Received columns: {list(frame.columns)}")
    return frame["fold"].astype(np.int8)
