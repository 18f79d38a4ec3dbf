"""``rsna blend``: combine several runs' predictions, with a CV that is not fit on what it scores.

A *run* here is a stage folder: ``RUN`` (stage 1) or ``RUN/stage2``. It holds
``fold_<k>/oof.csv`` and ``submission.csv``. Runs can be blended only when every image
is out of fold in the same fold in each of them, which is what sharing ``folds.csv``
means; otherwise the blend's CV would leak.

The blend is a weighted mean of the runs' logits, with weights >= 0 that sum to 1
(:data:`WEIGHTINGS`): equal weights, one weight set for every label, or one per label,
fitted by scipy's SLSQP to the out-of-fold log loss. ``auto`` picks among them with a CV
nested inside the training folds: per-label weights fitted on a few folds overfit (on
the demo they score worse than either run), and equal weights are hard to beat for runs
of one recipe. The reported CV scores each fold with weights chosen and fitted on the
other folds only; the test's weights are chosen and fitted on every fold. NumPy, pandas
and scipy only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.data.labels import LABELS
from rsna.errors import RsnaError
from rsna.evaluate import fold_scores, read_fold_oof, significant, split_by_fold
from rsna.metrics import WEIGHTS, logit, per_label_log_loss, sigmoid, weighted_log_loss
from rsna.predictions import TestImages, test_images, with_prior
from rsna.runfiles import read_long_predictions
from rsna.stack import STACKERS, StackError, StackParams, StackResult, describe, stack_runs

__all__ = [
    "BlendError",
    "BlendResult",
    "RunPredictions",
    "WEIGHTINGS",
    "Weighting",
    "blend_runs",
    "check_same_folds",
    "choose_weighting",
    "cross_validated_blend",
    "fit_weights",
    "read_run",
    "read_submission",
    "run_work_dir",
    "score_table",
    "stack_found",
    "unique_names",
    "weights_for",
    "weights_report",
    "write_blend",
]

#: How blend weights are set (``rsna blend --weights``); ``auto`` chooses among the others.
Weighting = Literal["auto", "equal", "shared", "per-label"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)[1:]


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
    weighting: str  # the WEIGHTINGS entry of the test's weights
    fold_weighting: dict[int, str]  # fold -> the WEIGHTINGS entry that scored it


def read_submission(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A Kaggle ``ID,Label`` file as a wide frame: image ID -> LABELS, every value checked
    (:func:`rsna.runfiles.read_long_predictions`)."""
    return read_long_predictions(path)


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


def fit_weights(
    logits: np.ndarray, truth: np.ndarray, *, label_weights: np.ndarray | None = None
) -> np.ndarray:
    """Weights >= 0 summing to 1 that minimise the log loss of ``sigmoid(logits @ w)``.

    Args:
        logits: (n, runs) one label's logits from each run, or (n, runs, labels) to fit
            one weight set to every label at once.
        truth: (n,) or (n, labels), 0/1.
        label_weights: the labels' shares of the loss (default equal).
    """
    from scipy.optimize import minimize

    if logits.ndim == 2:
        logits, truth = logits[:, :, None], truth[:, None]
    n, k, labels = logits.shape
    if k == 1:
        return np.ones(1)
    share = np.ones(labels) if label_weights is None else np.asarray(label_weights, np.float64)
    share = share / share.sum()

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.einsum("nrl,r->nl", logits, w)
        value = float(np.mean(np.logaddexp(0.0, z) - truth * z, axis=0) @ share)
        return value, np.einsum("nrl,nl,l->r", logits, sigmoid(z) - truth, share) / n

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


def weights_for(weighting: str, logits: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(labels, runs) weights of one of :data:`WEIGHTINGS`, fitted to (n, runs, labels)
    logits and (n, labels) truth; ``shared`` weighs the labels as the metric does."""
    k, labels = logits.shape[1], logits.shape[2]
    if weighting == "equal":
        return np.full((labels, k), 1.0 / k)
    if weighting == "shared":
        return np.tile(fit_weights(logits, truth, label_weights=WEIGHTS), (labels, 1))
    if weighting == "per-label":
        return np.stack([fit_weights(logits[:, :, j], truth[:, j]) for j in range(labels)])
    raise _unknown_weighting(weighting)


def _unknown_weighting(value: object) -> BlendError:
    return BlendError(f"`weights` must be one of {get_args(Weighting)}. Received: {value!r}")


def choose_weighting(logits: np.ndarray, truth: np.ndarray, folds: np.ndarray) -> str:
    """The :data:`WEIGHTINGS` entry to use, by a CV over `folds`: each fold is scored with
    weights fitted on the others, and a weighting with more free weights replaces a
    simpler one only when it scores better on average by more than the fold-to-fold
    standard deviation of the difference (:func:`rsna.evaluate.significant`). ``equal``
    with a single fold.
    """
    keys = np.unique(folds)
    if len(keys) < 2:
        return "equal"
    scores = {}
    for weighting in WEIGHTINGS:
        per_fold = []
        for k in keys:
            held = folds == k
            w = weights_for(weighting, logits[~held], truth[~held])
            per_fold.append(weighted_log_loss(truth[held], _blend(logits[held], w)))
        scores[weighting] = np.array(per_fold)
    chosen = WEIGHTINGS[0]
    for weighting in WEIGHTINGS[1:]:
        difference = pd.DataFrame({"gain": scores[chosen] - scores[weighting]})
        if difference["gain"].mean() > 0 and significant(difference)["gain"]:
            chosen = weighting
    return chosen


def _blend(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, runs, labels) logits and (labels, runs) weights -> (n, labels) probabilities."""
    return sigmoid(np.einsum("nrl,lr->nl", stack, weights))


def cross_validated_blend(
    found: list[RunPredictions], truth: pd.DataFrame, *, weights: Weighting = "auto"
) -> BlendResult:
    """Blend: each fold scored with weights chosen (for ``auto``) and fitted on the other
    folds only."""
    if weights not in get_args(Weighting):
        raise _unknown_weighting(weights)
    folds = check_same_folds(found)
    index = folds.index
    oof = np.stack([logit(r.oof.loc[index].to_numpy(np.float64)) for r in found], axis=1)
    y = truth.loc[index, list(LABELS)].to_numpy(np.float64)
    names = [r.name for r in found]
    fold_of = folds.to_numpy()

    def fit_on(rows: np.ndarray) -> tuple[str, np.ndarray]:
        chosen = (
            choose_weighting(oof[rows], y[rows], fold_of[rows]) if weights == "auto" else weights
        )
        return chosen, weights_for(chosen, oof[rows], y[rows])

    blended = np.empty_like(y)
    fold_weights, fold_weighting = {}, {}
    for k in sorted(folds.unique()):
        held = fold_of == k
        fold_weighting[int(k)], w = fit_on(~held)
        blended[held] = _blend(oof[held], w)
        fold_weights[int(k)] = pd.DataFrame(w, index=list(LABELS), columns=names)
    weighting, final = fit_on(np.ones(len(index), bool))
    test_index = found[0].test.index
    test = np.stack([logit(r.test.loc[test_index].to_numpy(np.float64)) for r in found], axis=1)
    return BlendResult(
        pd.DataFrame(blended, index=index, columns=list(LABELS)).rename_axis("image_id"),
        pd.DataFrame(_blend(test, final), index=test_index, columns=list(LABELS)).rename_axis(
            "image_id"
        ),
        pd.DataFrame(final, index=list(LABELS), columns=names),
        fold_weights,
        weighting,
        fold_weighting,
    )


def score_table(
    found: list[RunPredictions], oof: pd.DataFrame, truth: pd.DataFrame
) -> pd.DataFrame:
    """Per-label OOF log loss of every run and of the blend `oof` (rows: LABELS + weighted)."""
    index = oof.index
    table = {r.name: per_label_log_loss(truth.loc[index], r.oof.loc[index]) for r in found}
    table["blend"] = per_label_log_loss(truth.loc[index], oof)
    return pd.DataFrame(table)


def weights_report(result: BlendResult) -> dict:
    """The weighted blend's part of ``evaluate.json``."""
    return {
        "cv": "each fold blended with weights chosen and fitted on the other folds",
        "weighting": result.weighting,
        "fold_weighting": {str(k): w for k, w in result.fold_weighting.items()},
        "weights": result.weights.to_dict(orient="index"),
        "fold_weights": {str(k): w.to_dict(orient="index") for k, w in result.fold_weights.items()},
    }


def write_blend(
    found: list[RunPredictions], oof: pd.DataFrame, truth: pd.DataFrame, out: Path, *, method: dict
) -> pd.DataFrame:
    """``oof.csv``, ``evaluate.json`` (with `method`, how the blend was made) and
    ``blend.png`` in `out`; returns the score table."""
    from rsna.plots import plot_label_losses

    table = score_table(found, oof, truth)
    best = str(table.drop(columns="blend").loc["weighted"].idxmin())
    folds = found[0].folds
    by_run = next(r for r in found if r.name == best).oof.loc[oof.index]
    difference = fold_scores(split_by_fold(oof, folds), truth) - fold_scores(
        split_by_fold(by_run, folds), truth
    )
    out.mkdir(parents=True, exist_ok=True)
    files.write_csv(oof, out / runs.OOF, index=True)
    files.write_json(
        out / runs.EVALUATE_JSON,
        {
            "runs": {r.name: str(r.folder) for r in found},
            "images": len(oof),
            "weighted_log_loss": float(table.loc["weighted", "blend"]),
            "per_label": table.to_dict(orient="index"),
            "best_run": best,
            "fold_sd_of_difference_to_best_run": difference.std(ddof=1).to_dict(),
            "significant_against_best_run": significant(difference).to_dict(),
            **method,
        },
    )
    columns = {c: c for c in table.columns}
    figure = plot_label_losses(
        table, columns=columns, title="Out-of-fold log loss: runs and their blend"
    )
    files.save_figure(figure, out / runs.BLEND_PNG)
    return table


def stack_found(
    found: list[RunPredictions], truth: pd.DataFrame, test: TestImages, *, params: StackParams
) -> tuple[StackResult, pd.DataFrame]:
    """:func:`rsna.stack.stack_runs` on the runs; the test predictions with the prior for
    images without a readable file, as every stage's submission has them."""
    folds = check_same_folds(found)
    columns = ["series_uid", "slice_index", "z", "readable", "study_uid", "patient_id"]
    slices = test.metadata[columns]
    test_slices = slices.reindex(found[0].test.index)
    absent = test_slices["series_uid"].isna()
    test_slices.loc[absent, ["series_uid", "slice_index", "study_uid", "patient_id"]] = ["", -1, "", ""]
    test_slices = test_slices.astype({"slice_index": "int64"})

    def logits(frames: list[pd.DataFrame]) -> dict[str, pd.DataFrame]:
        return {
            r.name: pd.DataFrame(logit(f.to_numpy(np.float64)), index=f.index, columns=f.columns)
            for r, f in zip(found, frames, strict=True)
        }

    result = stack_runs(
        logits([r.oof for r in found]),
        logits([r.test for r in found]),
        truth,
        folds,
        slices,
        test_slices,
        params=params,
    )
    unreadable = test_slices.index[absent | ~test_slices["readable"].fillna(False).astype(bool)]
    return result, with_prior(result.test.copy(), sorted(unreadable), test.prior)


def unique_names(folders: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (``a/stage2``, ``seed1/runs/demo``)."""
    longest = max(len(f.parts) for f in folders)
    for depth in range(1, longest + 1):
        names = ["/".join(f.parts[-depth:]) for f in folders]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]


def run_work_dir(folder: str | os.PathLike[str]) -> Path:
    """The work folder of a stage folder, from the run's ``config.toml``: here, one up
    (``RUN/stage2``, ``RUN/smoothed``) or two up (``RUN/stage2/smoothed``)."""
    from rsna.config import load_config

    folder = Path(folder)
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / runs.CONFIG_FILE).is_file():
            return Path(load_config(candidate / runs.CONFIG_FILE).data.work_dir)
    raise BlendError(f"{folder}: no {runs.CONFIG_FILE} here or up to two folders up; pass --work")


def blend_runs(
    folders: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    work_dir: str | os.PathLike[str] | None = None,
    weights: Weighting = "auto",
    stack: str | None = None,
    stack_params: StackParams | None = None,
    clip: float = 1e-5,
) -> tuple[BlendResult | StackResult, pd.DataFrame]:
    """Read, blend (or with `stack`, stack) and write: ``oof.csv``, ``evaluate.json``,
    ``blend.png``, ``predictions_test.csv`` and a validated ``submission.csv`` in `out`.

    Raises:
        BlendError: fewer than two runs, a run named twice, missing predictions, or
            runs that do not share folds.
        rsna.stack.StackError: `stack` is unknown, or its library is not installed.
    """
    from rsna.data.metadata import read_prepared_labels
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
    test_set = test_images(work_dir)
    for run in found:
        unknown = run.oof.index.difference(truth.index)
        if len(unknown):
            raise BlendError(f"run {run.name}: {len(unknown)} out-of-fold images have no labels in {work_dir} (e.g. {unknown[0]}); was it trained on another work folder?")  # fmt: skip
        if not run.test.index.sort_values().equals(test_set.images.sort_values()):
            other = run.test.index.symmetric_difference(test_set.images)
            raise BlendError(f"run {run.name}: its submission's images differ from the sample submission's (e.g. {other[0]})")  # fmt: skip
    out = Path(out)
    if stack is None:
        result = cross_validated_blend(found, truth, weights=weights)
        test, method = result.test, weights_report(result)
    elif stack in STACKERS:
        params = stack_params or StackParams()
        result, test = stack_found(found, truth, test_set, params=params)
        method = describe(params, result, [r.name for r in found])
    else:
        raise StackError(f"`stack` must be one of {STACKERS}. Received: stack={stack!r}")
    table = write_blend(found, result.oof, truth, out, method=method)
    files.write_csv(test, out / runs.PREDICTIONS_TEST, index=True)
    write_submission(test, test_set.sample_csv, out / runs.SUBMISSION, clip=clip)
    return result, table
