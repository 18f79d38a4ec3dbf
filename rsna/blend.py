"""``rsna blend``: combine several runs' predictions, with a CV that is not fit on what it scores.

A *run* here is a stage folder: ``RUN`` (stage 1) or ``RUN/stage2``. It holds
``fold_<k>/oof.csv`` and ``submission.csv``. Runs can be blended only when every image
is out of fold in the same fold in each of them, which is what sharing ``folds.csv``
means; otherwise the blend's CV would leak.

Per label, the blend is a weighted mean of the runs' logits, with weights >= 0 that sum
to 1, fitted by scipy's SLSQP to the out-of-fold log loss. The reported CV scores each
fold with weights fitted on the other folds only; the weights written for the test are
fitted on every fold. NumPy, pandas and scipy only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.data.labels import LABELS
from rsna.errors import RsnaError
from rsna.evaluate import fold_scores, read_fold_oof, significant, split_by_fold
from rsna.metrics import logit, per_label_log_loss, sigmoid

__all__ = [
    "BlendError",
    "BlendResult",
    "RunPredictions",
    "blend_runs",
    "check_same_folds",
    "cross_validated_blend",
    "fit_weights",
    "read_run",
    "read_submission",
    "run_work_dir",
    "score_table",
    "unique_names",
    "write_blend",
]


class BlendError(RsnaError):
    """Runs that cannot be blended: missing predictions, or different folds."""


@dataclass(frozen=True)
class RunPredictions:
    """One stage folder's out-of-fold and test predictions."""

    name: str
    folder: Path
    oof: pd.DataFrame  # image ID -> LABELS
    folds: pd.Series  # image ID -> the fold it is out of
    test: pd.DataFrame  # image ID -> LABELS


@dataclass(frozen=True)
class BlendResult:
    oof: pd.DataFrame  # each fold blended with weights fitted on the other folds
    test: pd.DataFrame  # blended with weights fitted on every fold
    weights: pd.DataFrame  # label -> one weight per run (fitted on every fold)
    fold_weights: dict[int, pd.DataFrame]  # fold -> the weights that scored it


def read_submission(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A Kaggle ``ID,Label`` file as a wide frame: image ID -> LABELS."""
    long = pd.read_csv(path)
    parts = long["ID"].str.rsplit("_", n=1, expand=True)
    wide = long.assign(image_id=parts[0], label=parts[1]).pivot(
        index="image_id", columns="label", values="Label"
    )
    absent = [c for c in LABELS if c not in wide.columns]
    if absent:
        raise BlendError(f"{path}: no rows for label(s) {absent}")
    return wide[list(LABELS)]


def read_run(folder: str | os.PathLike[str], *, name: str | None = None) -> RunPredictions:
    """The OOF (from every ``fold_<k>/oof.csv``) and test predictions of a stage folder,
    called `name` (default: the folder's name).

    Raises:
        BlendError: the folder has no fold with OOF predictions, or no submission.
    """
    folder = Path(folder)
    parts = read_fold_oof(folder)
    if not parts:
        raise BlendError(f"{folder}: no fold_*/{runs.OOF}; train and evaluate the run first")
    if not (folder / runs.SUBMISSION).is_file():
        raise BlendError(f"{folder}: no {runs.SUBMISSION}; run `rsna predict` first")
    oof = pd.concat(parts.values())[list(LABELS)]
    folds = pd.concat([pd.Series(k, index=f.index) for k, f in parts.items()]).sort_index()
    test = read_submission(folder / runs.SUBMISSION)
    return RunPredictions(name or folder.name, folder, oof, folds, test)


def check_same_folds(found: list[RunPredictions]) -> pd.Series:
    """The fold of each image, which every run must share.

    Raises:
        BlendError: two runs put an image in different folds, or cover different images.
    """
    first = found[0]
    for other in found[1:]:
        if not first.folds.index.equals(other.folds.index):
            extra = first.folds.index.symmetric_difference(other.folds.index)
            raise BlendError(
                f"runs {first.name} and {other.name} have out-of-fold predictions for different "
                f"images (e.g. {extra[0]}); blend only runs made with the same folds.csv"
            )
        moved = first.folds.index[first.folds.to_numpy() != other.folds.to_numpy()]
        if len(moved):
            raise BlendError(
                f"runs {first.name} and {other.name} do not share folds.csv: {len(moved)} images "
                f"are in different folds (e.g. {moved[0]})"
            )
        if not first.test.index.sort_values().equals(other.test.index.sort_values()):
            raise BlendError(f"runs {first.name} and {other.name} predict different test images")
    return first.folds


def fit_weights(logits: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Weights >= 0 summing to 1 that minimise the log loss of ``sigmoid(logits @ w)``.

    Args:
        logits: (n, runs) one label's logits from each run.
        truth: (n,) 0/1.
    """
    from scipy.optimize import minimize

    n, k = logits.shape
    if k == 1:
        return np.ones(1)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = logits @ w
        value = float(np.mean(np.logaddexp(0.0, z) - truth * z))
        return value, logits.T @ (sigmoid(z) - truth) / n

    result = minimize(
        loss,
        np.full(k, 1.0 / k),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[
            {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}
        ],
    )
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum()


def _blend(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, runs, labels) logits and (labels, runs) weights -> (n, labels) probabilities."""
    return sigmoid(np.einsum("nrl,lr->nl", stack, weights))


def cross_validated_blend(found: list[RunPredictions], truth: pd.DataFrame) -> BlendResult:
    """Blend per label: each fold scored with weights fitted on the other folds."""
    folds = check_same_folds(found)
    index = folds.index
    oof = np.stack([logit(r.oof.loc[index].to_numpy(np.float64)) for r in found], axis=1)
    y = truth.loc[index, list(LABELS)].to_numpy(np.float64)
    names = [r.name for r in found]

    def weights_on(rows: np.ndarray) -> np.ndarray:
        return np.stack([fit_weights(oof[rows, :, j], y[rows, j]) for j in range(len(LABELS))])

    blended = np.empty_like(y)
    fold_weights = {}
    for k in sorted(folds.unique()):
        held = (folds == k).to_numpy()
        w = weights_on(~held)
        blended[held] = _blend(oof[held], w)
        fold_weights[int(k)] = pd.DataFrame(w, index=list(LABELS), columns=names)
    final = weights_on(np.ones(len(index), bool))
    test_index = found[0].test.index
    test = np.stack([logit(r.test.loc[test_index].to_numpy(np.float64)) for r in found], axis=1)
    return BlendResult(
        pd.DataFrame(blended, index=index, columns=list(LABELS)).rename_axis("image_id"),
        pd.DataFrame(_blend(test, final), index=test_index, columns=list(LABELS)).rename_axis(
            "image_id"
        ),
        pd.DataFrame(final, index=list(LABELS), columns=names),
        fold_weights,
    )


def score_table(
    found: list[RunPredictions], result: BlendResult, truth: pd.DataFrame
) -> pd.DataFrame:
    """Per-label OOF log loss of every run and of the blend (rows: LABELS + weighted)."""
    index = result.oof.index
    table = {r.name: per_label_log_loss(truth.loc[index], r.oof.loc[index]) for r in found}
    table["blend"] = per_label_log_loss(truth.loc[index], result.oof)
    return pd.DataFrame(table)


def write_blend(
    found: list[RunPredictions], result: BlendResult, truth: pd.DataFrame, out: Path
) -> pd.DataFrame:
    """``oof.csv``, ``evaluate.json`` and ``blend.png`` in `out`; returns the score table."""
    from rsna.plots import plot_label_losses

    table = score_table(found, result, truth)
    best = str(table.drop(columns="blend").loc["weighted"].idxmin())
    folds = found[0].folds
    by_run = next(r for r in found if r.name == best).oof.loc[result.oof.index]
    difference = fold_scores(split_by_fold(result.oof, folds), truth) - fold_scores(
        split_by_fold(by_run, folds), truth
    )
    out.mkdir(parents=True, exist_ok=True)
    files.write_csv(result.oof, out / runs.OOF, index=True)
    files.write_json(
        out / runs.EVALUATE_JSON,
        {
            "runs": {r.name: str(r.folder) for r in found},
            "images": len(result.oof),
            "weighted_log_loss": float(table.loc["weighted", "blend"]),
            "cv": "each fold blended with weights fitted on the other folds",
            "per_label": table.to_dict(orient="index"),
            "best_run": best,
            "fold_sd_of_difference_to_best_run": difference.std(ddof=1).to_dict(),
            "significant_against_best_run": significant(difference).to_dict(),
            "weights": result.weights.to_dict(orient="index"),
            "fold_weights": {
                str(k): w.to_dict(orient="index") for k, w in result.fold_weights.items()
            },
        },
    )
    columns = {c: c for c in table.columns}
    figure = plot_label_losses(
        table, columns=columns, title="Out-of-fold log loss: runs and their blend"
    )
    files.save_figure(figure, out / runs.BLEND_PNG)
    return table


def unique_names(folders: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (``a/stage2``, ``seed1/runs/demo``)."""
    longest = max(len(f.parts) for f in folders)
    for depth in range(1, longest + 1):
        names = ["/".join(f.parts[-depth:]) for f in folders]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]


def run_work_dir(folder: str | os.PathLike[str]) -> Path:
    """The work folder of a stage folder, from the run's ``config.toml`` (here or one up)."""
    from rsna.config import load_config

    folder = Path(folder)
    for candidate in (folder / runs.CONFIG_FILE, folder.parent / runs.CONFIG_FILE):
        if candidate.is_file():
            return Path(load_config(candidate).data.work_dir)
    raise BlendError(f"{folder}: no {runs.CONFIG_FILE} here or one folder up; pass --work")


def blend_runs(
    folders: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    work_dir: str | os.PathLike[str] | None = None,
    clip: float = 1e-5,
) -> tuple[BlendResult, pd.DataFrame]:
    """Read, blend and write: ``oof.csv``, ``evaluate.json``, ``blend.png``,
    ``predictions_test.csv`` and a validated ``submission.csv`` in `out`.

    Raises:
        BlendError: fewer than two runs, a run named twice, missing predictions, or
            runs that do not share folds.
    """
    from rsna.data.metadata import read_prepared_labels
    from rsna.predictions import test_images
    from rsna.submission import write_submission

    if len(folders) < 2:
        raise BlendError(f"blend needs at least 2 runs. Received: {len(folders)}")
    resolved = [Path(f).resolve() for f in folders]
    if len(set(resolved)) < len(resolved):
        raise BlendError(f"a run is named twice: {[str(f) for f in folders]}")
    names = unique_names(resolved)
    found = [read_run(f, name=n) for f, n in zip(folders, names, strict=True)]
    work_dir = Path(work_dir) if work_dir is not None else run_work_dir(folders[0])
    truth = read_prepared_labels(work_dir)
    result = cross_validated_blend(found, truth)
    out = Path(out)
    table = write_blend(found, result, truth, out)
    files.write_csv(result.test, out / runs.PREDICTIONS_TEST, index=True)
    write_submission(
        result.test, test_images(work_dir).sample_csv, out / runs.SUBMISSION, clip=clip
    )
    return result, table
