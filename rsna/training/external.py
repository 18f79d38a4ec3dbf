"""``rsna predict CONFIG --dicom-dir DIR --out OUT``: a trained run on anyone's DICOM studies.

Every file under ``DIR`` is sorted by :func:`rsna.data.studies.scan_studies` into CT
slices, skipped files (not DICOM, no image, not CT, scouts, repeats) and unreadable ones.
The slices are read straight from their DICOM files with the run's windows, crop and
size (no store is needed: the store's codec, if lossy, is the only difference from
training), and predicted by every fold's slice model over the TTA views and snapshots
of ``predict.tta`` and ``train.snapshots``, exactly as the test set is. Where stage 2 is
trained for every fold, each fold's series model then reads its own slice model's
embeddings of each series in z order, as in :func:`rsna.training.stage2.predict_test`;
unreadable slices are left out of their series. The folds are combined by
``predict.ensemble``.

``OUT`` receives (each file written atomically):

* ``slices.csv``: one row per slice: image ID (SOPInstanceUID), file, patient, study,
  series, z, slice index, the six probabilities, and with stage 2 the stage-1 ones as
  ``stage1_<label>``;
* ``studies.csv``: one row per study: the max of each label over its slices, its series
  and slice counts, and ``positive`` (``any`` at or above the threshold);
* ``skipped.csv`` and ``unreadable.csv``: every file that is not a slice, with why;
* ``studies/<study>.png`` for each positive study (:func:`rsna.plots.plot_study`);
* ``report.json``: the counts, the stage, folds, views, threshold and time.

:func:`evaluate_cq500` (``rsna external``) does this for CQ500's patients' folders and
scores each patient's max against the majority of its three reads
(:mod:`rsna.data.cq500`), at thresholds chosen on the training OOF.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.config import Config
from rsna.data.labels import LABELS
from rsna.data.series import embeddings_frame
from rsna.data.sources import ArrayImages, DicomFiles, ImageSource, read_windowed
from rsna.data.studies import SLICE_COLUMNS, StudyScan, scan_studies, study_table
from rsna.data.views import expand_views
from rsna.errors import RsnaError
from rsna.metrics import sigmoid
from rsna.predictions import PredictError, combine
from rsna.training.embed import embedder_of, pool_views
from rsna.training.models import check_slice_model, load_model
from rsna.training.stage1 import fold_models, fold_snapshots, predict_views
from rsna.training.stage2 import predict_series, series_of
from rsna.training.strategy import choose_strategy

__all__ = [
    "EXTERNAL_FILES",
    "OUT_FILES",
    "PRELOAD_BYTES",
    "ExternalResult",
    "StudyPrediction",
    "evaluate_cq500",
    "json_ready",
    "predict_dicom_dir",
    "predicted_stages",
    "write_study_outputs",
]

#: What ``rsna predict --dicom-dir`` writes in ``OUT``.
OUT_FILES = {
    "slices": "slices.csv",
    "studies": "studies.csv",
    "skipped": "skipped.csv",
    "unreadable": "unreadable.csv",
    "report": "report.json",
    "figures": "studies",
}


@dataclass(frozen=True)
class StudyPrediction:
    """What :func:`predict_dicom_dir` wrote: per slice, per study, and the report."""

    slices: pd.DataFrame
    studies: pd.DataFrame
    report: dict
    out: Path


def predicted_stages(config: Config, stage: int | None) -> tuple[dict[int, Path], dict | None]:
    """The slice models, and the series models when stage 2 predicts: with `stage` None,
    where it is trained for every fold that stage 1 has.

    Raises:
        PredictError: no trained slice model; or ``stage=2`` and a fold without its
            series model.
    """
    first = fold_models(config)
    if stage == 1:
        return first, None
    found = runs.fold_dirs(config.stage_dir(2), holding=runs.BEST_MODEL)
    second = {k: found[k] / runs.BEST_MODEL for k in first if k in found}
    if len(second) == len(first):
        return first, second
    if stage == 2:
        missing = sorted(set(first) - set(second))
        raise PredictError(
            f"{config.stage_dir(2)}: no series model for folds {missing}; run "
            "`rsna train CONFIG --stage 2` first, or predict with --stage 1"
        )
    return first, None


def _check_out(out: Path, dicom_dir: Path, *, marker: str = OUT_FILES["report"]) -> None:
    """Refuse an `out` that is the scanned folder, inside it, or holds other files than
    an earlier output (which has `marker`)."""
    out, root = out.resolve(), dicom_dir.resolve()
    if out == root or root in out.parents:
        raise PredictError(
            f"`out` must be outside the DICOM folder. Received: out={str(out)!r}, "
            f"dicom_dir={str(root)!r}"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise PredictError(
            f"{out}: not empty and not an earlier output of this command (no {marker}); "
            "choose an empty or new folder"
        )


#: Read a folder's slices once into memory, instead of once per fold, view and snapshot,
#: when they fit in this many bytes (e.g. 2,800 slices at 512 px and 3 windows).
PRELOAD_BYTES = 2 * 1024**3


def _images(config: Config, scan: StudyScan, *, workers: int | None) -> ImageSource:
    """The scanned slices, windowed: read once into memory (all cores) when they fit in
    :data:`PRELOAD_BYTES`, else straight from their DICOMs at every pass."""
    ids = list(scan.slices.index)
    if len(ids) * int(np.prod(config.image.spec.shape)) > PRELOAD_BYTES:
        return DicomFiles(scan.paths(), scan.slices, config.image.spec)
    paths = scan.paths()
    images, failed = read_windowed([paths[i] for i in ids], config.image.spec, workers=workers)
    unreadable = {ids[row]: reason for row, reason in failed.items()}
    return ArrayImages(images, ids, scan.slices, config.image.spec, unreadable=unreadable)


def _fold_predictions(
    config: Config,
    scan: StudyScan,
    models: dict,
    series_models: dict | None,
    *,
    strategy,
    workers: int | None,
) -> tuple[list[np.ndarray], list[np.ndarray], set[str]]:
    """Per fold: stage 1's probabilities, stage 2's (where it predicts), the unreadable IDs."""
    ids = list(scan.slices.index)
    source = _images(config, scan, workers=workers)
    replicas = strategy.num_replicas_in_sync
    first, second, unreadable = [], [], set()
    for k, path in models.items():
        with strategy.scope():
            model = load_model(path)
        check_slice_model(model, config, path=path)
        net = embedder_of(model) if series_models else model
        views, bad = predict_views(
            net, ids, config, replicas=replicas, snapshots=fold_snapshots(config, k),
            weights_of=model, source=source,
        )  # fmt: skip
        unreadable |= set(bad)
        if series_models is None:
            first.append(np.mean(views, axis=0, dtype=np.float64))
        else:
            first.append(np.mean([sigmoid(logits) for _, logits in views], axis=0))
            second.append(_series_probabilities(config, scan, views, bad, series_models[k]))
        keras.backend.clear_session()
    return first, second, unreadable


def _series_probabilities(
    config: Config, scan: StudyScan, views: list, unreadable: list[str], path: Path
) -> np.ndarray:
    """A fold's series model on its slice model's embeddings of the readable slices; the
    rows of unreadable slices are NaN."""
    pooled, logits = pool_views(views, features="features" in config.sequence.inputs)
    readable = ~np.isin(scan.slices.index, unreadable)
    embeddings = embeddings_frame(
        scan.slices.index[readable],
        logits=logits[readable],
        features=pooled[readable],
        readable=np.ones(int(readable.sum()), bool),
    )
    prior = np.full(len(LABELS), 0.5)  # unused: every slice in `embeddings` is readable
    series = series_of(config, embeddings, scan.slices, prior)
    probs = predict_series(load_model(path), series, config)
    return probs.reindex(scan.slices.index).to_numpy()


def predict_dicom_dir(
    config: Config,
    dicom_dir: str | Path,
    out: str | Path,
    *,
    stage: int | None = None,
    threshold: float = 0.5,
    strategy=None,
    workers: int | None = None,
) -> StudyPrediction:
    """Predict every CT slice under `dicom_dir` with `config`'s trained run; write `out`.

    Raises:
        rsna.data.studies.StudiesError: `dicom_dir` is no folder or holds no CT slice.
        PredictError: no trained folds (see :func:`predicted_stages`), a bad `threshold`,
            or an `out` that is inside `dicom_dir` or holds other files.
    """
    start = time.perf_counter()
    if not 0.0 < threshold < 1.0:
        raise PredictError(f"`threshold` must be in (0, 1). Received: threshold={threshold!r}")
    dicom_dir, out = Path(dicom_dir), Path(out)
    _check_out(out, dicom_dir)
    models, series_models = predicted_stages(config, stage)
    scan = scan_studies(dicom_dir, workers=workers)
    first, second, unreadable = _fold_predictions(
        config, scan, models, series_models, strategy=strategy or choose_strategy(), workers=workers
    )
    how = config.predict.ensemble
    slices = scan.slices.copy()
    final = combine(second, how=how) if second else combine(first, how=how)
    slices[list(LABELS)] = final
    if second:
        slices[[f"stage1_{c}" for c in LABELS]] = combine(first, how=how)
    report = {
        "dicom_dir": str(dicom_dir),
        "stage": 2 if second else 1,
        "folds": [p.parent.name for p in models.values()],
        "tta": [v.label for v in expand_views(config.predict.tta)],
        "snapshots": config.train.snapshots,
        "ensemble": how,
        "threshold": threshold,
        "files": scan.counts(),
    }
    result = write_study_outputs(slices, scan, unreadable, out, report=report, threshold=threshold)
    result.report["seconds"] = round(time.perf_counter() - start, 1)
    files.write_json(out / OUT_FILES["report"], result.report)
    return result


def _figure_name(study_uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", study_uid) + ".png"


def write_study_outputs(
    slices: pd.DataFrame,
    scan: StudyScan,
    unreadable: set[str],
    out: Path,
    *,
    report: dict,
    threshold: float,
) -> StudyPrediction:
    """Write the CSVs, the positive studies' figures and the report in `out`; slices
    found unreadable while predicting move from `slices` to ``unreadable.csv``."""
    from rsna.plots import plot_study

    bad = slices.index.isin(sorted(unreadable))
    late = pd.DataFrame({"file": slices.loc[bad, "file"], "reason": "pixel data cannot be read"})
    slices = slices[~bad]
    studies = study_table(slices)
    studies["positive"] = studies["any"] >= threshold
    figures = out / OUT_FILES["figures"]
    shutil.rmtree(figures, ignore_errors=True)  # an earlier run's figures
    figures.mkdir(parents=True)
    for uid in studies.index[studies["positive"]]:
        figure = plot_study(slices[slices["study_uid"] == uid], threshold=threshold)
        files.save_figure(figure, figures / _figure_name(uid))
    columns = [c for c in slices.columns if c not in SLICE_COLUMNS]
    files.write_csv(slices[list(SLICE_COLUMNS) + columns], out / OUT_FILES["slices"], index=True)
    files.write_csv(studies, out / OUT_FILES["studies"], index=True)
    files.write_csv(scan.skipped, out / OUT_FILES["skipped"])
    files.write_csv(
        pd.concat([scan.unreadable, late], ignore_index=True), out / OUT_FILES["unreadable"]
    )
    report = {
        **report,
        "slices": len(slices),
        "studies": len(studies),
        "positive_studies": int(studies["positive"].sum()),
        "unreadable": len(scan.unreadable) + len(late),
    }
    return StudyPrediction(slices, studies, report, out)


#: What ``rsna external`` writes in ``OUT`` (besides the predictions in ``predictions/``).
EXTERNAL_FILES = {
    "predictions": "predictions",
    "patients": "patients.csv",
    "report": "external.json",
    "roc": "roc.png",
}


@dataclass(frozen=True)
class ExternalResult:
    """The per-label scores on CQ500, the per-patient table, and the report."""

    scores: pd.DataFrame
    patients: pd.DataFrame
    report: dict


def _thresholds(config: Config, stage: int) -> dict[str, float]:
    """Youden's thresholds of `stage`'s training OOF at study level.

    Raises:
        PredictError: the OOF, or the work folder's metadata and labels, are not there.
    """
    from rsna.data.cq500 import oof_thresholds
    from rsna.data.metadata import read_metadata, read_prepared_labels
    from rsna.evaluate import read_oof

    try:
        oof, _ = read_oof(config.stage_dir(stage))
        metadata, labels = (
            read_metadata(config.data.work_dir),
            read_prepared_labels(config.data.work_dir),
        )
    except (RsnaError, OSError) as exc:
        raise PredictError(
            f"the thresholds are chosen on the training OOF, which needs {config.stage_dir(stage)}"
            f"/fold_*/oof.csv and the work folder {config.data.work_dir} (--set "
            f"data.work_dir=...): {exc}"
        ) from exc
    return oof_thresholds(oof, labels, metadata)


def _patients(slices: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Each patient's max per label over its slices, and how many slices lay outside
    any patient's folder."""
    from rsna.data.cq500 import patient_name

    names = slices["file"].map(patient_name)
    kept = slices[names.notna()]
    scores = kept[list(LABELS)].groupby(names[names.notna()]).max()
    scores.index.name = "name"
    return scores, int(names.isna().sum())


def evaluate_cq500(
    config: Config,
    cq500_dir: str | Path,
    out: str | Path,
    *,
    stage: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    strategy=None,
    workers: int | None = None,
) -> ExternalResult:
    """Score `config`'s run on a CQ500 folder: study-level predictions (the max over each
    patient's slices, every series) against the majority of the three reads.

    Raises:
        rsna.data.cq500.CQ500Error: no or a bad reads.csv, or no patient both read and
            predicted.
        PredictError: see :func:`predict_dicom_dir` and the OOF thresholds.
    """
    from rsna.data.cq500 import READS_CSV, CQ500Error, external_scores, read_reads
    from rsna.plots import plot_roc_pr

    cq500_dir, out = Path(cq500_dir), Path(out)
    if not (cq500_dir / READS_CSV).is_file():
        raise CQ500Error(
            f"{cq500_dir}: no {READS_CSV}; pass the folder that holds CQ500's reads.csv"
        )
    truth = read_reads(cq500_dir / READS_CSV)
    _check_out(out, cq500_dir, marker=EXTERNAL_FILES["report"])
    used = predicted_stages(config, stage)[1]
    thresholds = _thresholds(config, 2 if used else 1)
    prediction = predict_dicom_dir(
        config, cq500_dir, out / EXTERNAL_FILES["predictions"], stage=stage, strategy=strategy,
        workers=workers,
    )  # fmt: skip
    scores, outside = _patients(prediction.slices)
    both = truth.index.intersection(scores.index)
    if both.empty:
        raise CQ500Error(f"{cq500_dir}: no patient of {READS_CSV} has a readable CT slice")
    table = external_scores(
        truth.loc[both], scores.loc[both], thresholds, bootstrap=bootstrap, seed=seed
    )
    patients = truth.loc[both].add_prefix("truth_").join(scores.loc[both])
    files.write_csv(patients, out / EXTERNAL_FILES["patients"], index=True)
    figure = plot_roc_pr(truth.loc[both], scores.loc[both], where=f"CQ500, {len(both)} patients")
    files.save_figure(figure, out / EXTERNAL_FILES["roc"])
    report = {
        "cq500_dir": str(cq500_dir),
        "stage": prediction.report["stage"],
        "patients": len(both),
        "read_without_slices": sorted(set(truth.index) - set(both)),
        "predicted_without_reads": sorted(set(scores.index) - set(both)),
        "slices_outside_patient_folders": outside,
        "thresholds": "Youden's J on the training OOF, study level",
        "bootstrap": bootstrap,
        "seed": seed,
        "scores": json_ready(table),
    }
    files.write_json(out / EXTERNAL_FILES["report"], report)
    return ExternalResult(table, patients, report)


def json_ready(table: pd.DataFrame) -> dict:
    """`table` as {row: {column: value}}, NaN as None (JSON has no NaN)."""
    return {
        row: {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}
        for row, values in table.to_dict(orient="index").items()
    }
