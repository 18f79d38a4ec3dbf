"""CQ500, the external test set of RSNA-trained models: its reads, its layout, its scores.

CQ500 (Chilamkurthy et al., Lancet 2018; 491 head CTs from qure.ai) ships ``reads.csv``,
one row per patient: ``name`` (``CQ500-CT-<n>``), ``Category`` and each of three
radiologists' reads ``R1:``, ``R2:``, ``R3:`` of ``ICH``, ``IPH``, ``IVH``, ``SDH``,
``EDH``, ``SAH`` (0 or 1, among other findings), and one folder per patient,
``CQ500CT<n> CQ500CT<n>/``, holding its series as DICOM files. Here:

* :func:`read_reads`: the majority of the three reads per label, as the truth (2 of 3);
* :func:`patient_name`: the ``name`` of the patient a file's top folder belongs to;
* :func:`external_scores`: per label, the AUC with a patient-bootstrap 95% interval, and
  sensitivity and specificity at a threshold;
* :func:`youden_threshold`: the threshold chosen on the training OOF;
* :func:`make_cq500`: a small synthetic CQ500 with known truth, for tests and the demo.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from rsna import files
from rsna.data.labels import LABELS, read_labels
from rsna.data.paths import TRAIN_CSV
from rsna.data.studies import scan_studies
from rsna.errors import DataWarning, RsnaError

__all__ = [
    "CQ500_BLEED_FRACTION",
    "CQ500_FINDINGS",
    "READERS",
    "READS_CSV",
    "CQ500Error",
    "external_scores",
    "make_cq500",
    "oof_thresholds",
    "patient_name",
    "read_reads",
    "youden_threshold",
]

#: The reads file of a CQ500 folder.
READS_CSV = "reads.csv"
#: The three radiologists' column prefixes in reads.csv.
READERS = ("R1", "R2", "R3")
#: Each RSNA label's CQ500 finding (Chilamkurthy et al. 2018, table 1).
CQ500_FINDINGS = {
    "any": "ICH",
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
}
#: CQ500's share of patients with a bleed: 205 of 491 (Chilamkurthy et al. 2018, table 1).
CQ500_BLEED_FRACTION = 205 / 491
_FOLDER = re.compile(r"CQ500[-_ ]?CT[-_ ]?(\d+)", re.IGNORECASE)


class CQ500Error(RsnaError):
    """A reads.csv or a CQ500 folder that cannot be used."""


def read_reads(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The truth by patient ``name``: per label, 1 where at least 2 of the 3 reads say so.

    Raises:
        CQ500Error: a missing column, a repeated or malformed name, or a read that is not
            0 or 1, naming the file, the column and the value.
    """
    path = Path(path)
    try:
        reads = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CQ500Error(f"{path}: cannot read ({exc})") from exc
    needed = ["name"] + [f"{r}:{f}" for r in READERS for f in CQ500_FINDINGS.values()]
    missing = [c for c in needed if c not in reads.columns]
    if missing:
        raise CQ500Error(f"{path}: no column {', '.join(missing[:4])}; CQ500's reads.csv has them")
    names = reads["name"].fillna("").str.strip()
    bad = names[~names.str.fullmatch(r"CQ500-CT-\d+")]
    if len(bad):
        raise CQ500Error(
            f"{path}: `name` must look like CQ500-CT-<n>. Received: name={bad.iloc[0]!r}"
        )
    if names.duplicated().any():
        raise CQ500Error(f"{path}: `name` {names[names.duplicated()].iloc[0]!r} is repeated")
    truth = pd.DataFrame(index=pd.Index(names, name="name"))
    for label, finding in CQ500_FINDINGS.items():
        votes = np.zeros(len(reads), np.int64)
        for reader in READERS:
            column = f"{reader}:{finding}"
            values = reads[column].fillna("").str.strip()
            wrong = values[~values.isin(["0", "1"])]
            if len(wrong):
                raise CQ500Error(
                    f"{path}: `{column}` must be 0 or 1. Received: {column}={wrong.iloc[0]!r} "
                    f"(row {wrong.index[0] + 2})"
                )
            votes += values.astype(np.int64).to_numpy()
        truth[label] = (votes >= 2).astype(np.int8)
    return truth


def patient_name(file: str) -> str | None:
    """The reads.csv ``name`` of the patient whose top folder holds `file` (a path
    relative to the CQ500 folder, ``CQ500CT12 CQ500CT12/...`` -> ``CQ500-CT-12``), or
    None if the top folder names no patient."""
    top = Path(file).parts[0] if len(Path(file).parts) > 1 else ""
    found = _FOLDER.match(top)
    return f"CQ500-CT-{int(found.group(1))}" if found else None


def youden_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J) on
    (`truth`, `scores`); 0.5 when `truth` has one class only."""
    truth = np.asarray(truth)
    if truth.min() == truth.max():
        return 0.5
    fpr, tpr, thresholds = roc_curve(truth, scores)
    best = 1 + int(np.argmax(tpr[1:] - fpr[1:]))  # point 0 is "nothing positive" (inf)
    return float(thresholds[best])


def oof_thresholds(
    oof: pd.DataFrame, labels: pd.DataFrame, metadata: pd.DataFrame
) -> dict[str, float]:
    """Per label, :func:`youden_threshold` of the training OOF at study level (each
    label's max over a study's slices, for the predictions and the labels alike), the
    level CQ500 is read at."""
    study = metadata.loc[oof.index, "study_uid"]
    predicted = oof[list(LABELS)].groupby(study).max()
    truth = labels.loc[oof.index, list(LABELS)].groupby(study).max().loc[predicted.index]
    return {c: youden_threshold(truth[c].to_numpy(), predicted[c].to_numpy()) for c in LABELS}


def _bootstrap_auc(truth: np.ndarray, scores: np.ndarray, *, n: int, seed: int) -> list[float]:
    """AUCs of `n` resamples of the patients, with replacement; resamples with one class
    only are drawn again (they have no AUC)."""
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    while len(aucs) < n:
        pick = rng.integers(0, len(truth), len(truth))
        if truth[pick].min() != truth[pick].max():
            aucs.append(float(roc_auc_score(truth[pick], scores[pick])))
    return aucs


def external_scores(
    truth: pd.DataFrame,
    scores: pd.DataFrame,
    thresholds: dict[str, float],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per label: patients, positives, AUC and its bootstrap 95% interval (percentiles
    2.5 and 97.5 of `bootstrap` patient resamples seeded by `seed`), and sensitivity and
    specificity at `thresholds`. A label with one class only has no AUC (NaN).

    Raises:
        CQ500Error: `truth` and `scores` hold other patients, or `bootstrap` < 1.
    """
    if bootstrap < 1:
        raise CQ500Error(f"`bootstrap` must be positive. Received: bootstrap={bootstrap}")
    if not truth.index.equals(scores.index):
        raise CQ500Error("`truth` and `scores` must hold the same patients in the same order")
    rows = {}
    for label in LABELS:
        y, p = truth[label].to_numpy(np.int64), scores[label].to_numpy(np.float64)
        positive = p >= thresholds[label]
        row = {
            "patients": len(y),
            "positives": int(y.sum()),
            "threshold": thresholds[label],
            "sensitivity": float(positive[y == 1].mean()) if y.any() else np.nan,
            "specificity": float((~positive[y == 0]).mean()) if (y == 0).any() else np.nan,
            "auc": np.nan,
            "auc_low": np.nan,
            "auc_high": np.nan,
        }
        if y.min() != y.max():
            low, high = np.percentile(_bootstrap_auc(y, p, n=bootstrap, seed=seed), [2.5, 97.5])
            row.update(auc=float(roc_auc_score(y, p)), auc_low=float(low), auc_high=float(high))
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def make_cq500(
    out: str | os.PathLike[str],
    config,  # rsna.data.synthetic.SynthConfig
    *,
    reader_error: float = 0.1,
    workers: int | None = None,
) -> pd.DataFrame:
    """Write a synthetic CQ500 to `out`: ``reads.csv`` (three reads per patient, each
    label of each reader flipped with probability `reader_error`, seeded by the config's
    seed; ICH is any subtype), ``planted.csv`` (the planted truth per patient: each
    label's max over the patient's slices) and a ``CQ500CT<n> CQ500CT<n>/`` folder per
    patient with its series as ``Unknown Study/CT <k>/CT<slice>.dcm``. The phantoms are
    :func:`~rsna.data.synthetic.make_competition`'s, all patients, with their quirks, one
    study each, with a bleed in :data:`CQ500_BLEED_FRACTION` of them. Returns the
    planted truth.

    Raises:
        CQ500Error: `out` already holds a reads.csv, or `reader_error` is not in [0, 0.5).
    """
    from dataclasses import replace

    from rsna.data.synthetic import make_competition

    out = Path(out)
    if not 0.0 <= reader_error < 0.5:
        raise CQ500Error(
            f"`reader_error` must be in [0, 0.5). Received: reader_error={reader_error}"
        )
    if (out / READS_CSV).exists():
        raise CQ500Error(f"{out} already holds a {READS_CSV}; choose a new folder")
    staging = out / ".competition"
    synth = replace(config, test_fraction=0.0, studies=1, bleed_fraction=CQ500_BLEED_FRACTION)
    make_competition(staging, synth, workers=workers, force=True)
    with warnings.catch_warnings():  # the competition's repeated rows: a quirk of its CSV
        warnings.simplefilter("ignore", DataWarning)
        labels = read_labels(staging / TRAIN_CSV)
    scan = scan_studies(staging, workers=workers)
    slices = scan.slices[scan.slices["file"].str.endswith(".dcm")]
    patients = sorted(slices["patient_id"].unique())
    name_of = {p: n for n, p in enumerate(patients)}
    truth = {}
    for patient, rows in slices.groupby("patient_id", sort=True):
        n = name_of[patient]
        folder = out / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        for k, (_, series) in enumerate(rows.groupby("series_uid", sort=True)):
            target = folder / f"CT {k}"
            target.mkdir(parents=True, exist_ok=True)
            for _, row in series.iterrows():
                shutil.copyfile(staging / row["file"], target / f"CT{row['slice_index']:06d}.dcm")
        known = labels.index.intersection(rows.index)
        truth[f"CQ500-CT-{n}"] = labels.loc[known].max().reindex(list(LABELS), fill_value=0)
    for unread in scan.unreadable["file"]:  # the quirks that cannot be read go along
        shutil.copyfile(
            staging / unread, out / f"CQ500CT0 CQ500CT0/Unknown Study/{Path(unread).name}"
        )
    planted = pd.DataFrame(truth).T.astype(np.int8)
    planted.index.name = "name"
    shutil.rmtree(staging)
    files.write_csv(_reads(planted, reader_error, seed=config.seed), out / READS_CSV)
    files.write_csv(planted, out / "planted.csv", index=True)
    return planted


def _reads(planted: pd.DataFrame, error: float, *, seed: int) -> pd.DataFrame:
    """Three readers' reads of `planted`, each subtype flipped with probability `error`."""
    rng = np.random.default_rng([seed, 5])
    reads = pd.DataFrame({"name": planted.index, "Category": "B1"})
    for reader in READERS:
        subtypes = [label for label in LABELS if label != "any"]
        flips = rng.random((len(planted), len(subtypes))) < error
        read = planted[subtypes].to_numpy() ^ flips
        for j, label in enumerate(subtypes):
            reads[f"{reader}:{CQ500_FINDINGS[label]}"] = read[:, j].astype(int)
        reads[f"{reader}:ICH"] = read.max(axis=1).astype(int)
    return reads
