"""``rsna evaluate``: merge a stage's out-of-fold predictions and score them. pandas only.

The CV score is the competition metric over every fold's ``oof.csv``, next to the
prior baseline (each label's training mean), with each label's fold-to-fold standard
deviation. :func:`compare_stages` puts stage 1 and stage 2 side by side and calls a
difference significant only when it exceeds one standard deviation of the per-fold
differences. Nothing here imports TensorFlow, so scoring a run is instant.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files, runs
from rsna.data.metadata import read_prepared_labels
from rsna.errors import DataWarning, RsnaError
from rsna.metrics import per_label_log_loss, prior_predictions
from rsna.runfiles import RunFileError, read_wide_predictions

__all__ = [
    "EvaluateError",
    "Evaluation",
    "compare_stages",
    "evaluate",
    "format_scores",
    "fold_scores",
    "format_stages",
    "read_fold_oof",
    "read_oof",
    "significant",
    "split_by_fold",
]


class EvaluateError(RsnaError):
    """Nothing to evaluate: no fold has out-of-fold predictions."""


@dataclass(frozen=True)
class Evaluation:
    oof: pd.DataFrame
    scores: pd.DataFrame  # rows: LABELS + weighted; columns: model, prior, ratio, fold_std
    report: dict
    per_fold: pd.DataFrame  # rows: folds; columns: LABELS + weighted


def read_fold_oof(stage_folder: str | os.PathLike[str]) -> dict[int, pd.DataFrame]:
    """Fold number -> that fold's ``oof.csv``, for every fold of a stage that has one,
    each checked (:func:`rsna.runfiles.read_wide_predictions`); an image in two folds'
    files is an error.

    Raises:
        rsna.runfiles.RunFileError: a malformed file, or an image in two folds.
    """
    parts = runs.fold_dirs(stage_folder, holding=runs.OOF)
    read = {k: read_wide_predictions(p / runs.OOF) for k, p in parts.items()}
    seen: dict[str, int] = {}
    for k, frame in read.items():
        for image_id in frame.index:
            if image_id in seen:
                raise RunFileError(
                    f"{stage_folder}: image {image_id} is in fold_{seen[image_id]}/{runs.OOF} "
                    f"and fold_{k}/{runs.OOF}; an image is out of one fold only"
                )
            seen[image_id] = k
    return read


def split_by_fold(oof: pd.DataFrame, folds: pd.Series) -> dict[int, pd.DataFrame]:
    """`oof`'s rows by the fold of each image (`folds`: image ID -> fold number)."""
    of_row = folds.loc[oof.index].to_numpy()
    return {int(k): oof[of_row == k] for k in sorted(np.unique(of_row))}


def fold_scores(parts: Mapping[int, pd.DataFrame], labels: pd.DataFrame) -> pd.DataFrame:
    """Each fold's OOF log loss per label (rows: fold numbers; columns: LABELS + weighted)."""
    rows = {k: per_label_log_loss(labels.loc[oof.index], oof) for k, oof in parts.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("fold")


def significant(difference: pd.DataFrame) -> pd.Series:
    """Per column of per-fold differences: is the mean beyond one fold-to-fold standard deviation?"""
    if len(difference) < 2:
        return pd.Series(False, index=difference.columns)
    return difference.mean().abs() > difference.std(ddof=1)


def read_oof(stage_folder: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[str]]:
    """Every fold's oof.csv of a stage, concatenated, and the fold folders' names.

    Raises:
        EvaluateError: no fold has OOF predictions.
    """
    oof, names, _ = _read_stage(stage_folder)
    return oof, names


def _read_stage(stage_folder) -> tuple[pd.DataFrame, list[str], dict[int, pd.DataFrame]]:
    parts = read_fold_oof(stage_folder)
    if not parts:
        raise EvaluateError(f"{stage_folder}: no fold_*/{runs.OOF}; train some folds first")
    names = [runs.fold_dir(stage_folder, k).name for k in parts]
    return pd.concat(parts.values()), names, parts


def evaluate(
    stage_folder: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    baseline: pd.DataFrame | None = None,
) -> Evaluation:
    """Merge a stage's OOF predictions and score them against the prior, and against
    `baseline` (OOF probabilities of a reference such as :mod:`rsna.intensity`'s) on
    the images both cover.

    Writes ``oof.csv``, ``evaluate.json`` and ``roc_pr.png`` in `stage_folder`.

    Raises:
        EvaluateError: no fold has OOF predictions.
    """
    stage_folder = Path(stage_folder)
    oof, folds, parts = _read_stage(stage_folder)
    all_labels = read_prepared_labels(work_dir)
    labels = all_labels.loc[oof.index]
    model = per_label_log_loss(labels, oof)
    prior = per_label_log_loss(labels, prior_predictions(all_labels, oof.index))
    scores = pd.DataFrame({"model": model, "prior": prior})
    scores["ratio"] = scores["model"] / scores["prior"]
    per_fold = fold_scores(parts, all_labels)
    scores["fold_std"] = per_fold.std(ddof=1) if len(per_fold) > 1 else 0.0
    if baseline is not None:
        common = oof.index[oof.index.isin(baseline.index)]
        scores["baseline"] = per_label_log_loss(labels.loc[common], baseline.loc[common])
        scores["to_baseline"] = (
            pd.Series(per_label_log_loss(labels.loc[common], oof.loc[common])) / scores["baseline"]
        )
    report = {
        "folds": folds,
        "images": len(oof),
        "weighted_log_loss": model["weighted"],
        "prior_weighted_log_loss": prior["weighted"],
        "ratio_to_prior": model["weighted"] / prior["weighted"],
        **(
            {
                "baseline_weighted_log_loss": scores.at["weighted", "baseline"],
                "ratio_to_baseline": scores.at["weighted", "to_baseline"],
            }
            if baseline is not None
            else {}
        ),
        "per_label": scores.to_dict(orient="index"),
        "per_fold": {str(k): row for k, row in per_fold.to_dict(orient="index").items()},
    }
    files.write_csv(oof, stage_folder / runs.OOF, index=True)
    files.write_json(stage_folder / runs.EVALUATE_JSON, report)
    from rsna.plots import plot_roc_pr

    files.save_figure(plot_roc_pr(labels, oof), stage_folder / runs.ROC_PR)
    return Evaluation(oof, scores, report, per_fold)


def format_scores(scores: pd.DataFrame) -> str:
    """The per-label table of :func:`evaluate` as text."""
    extra = "baseline" in scores.columns
    head = f"{'label':18s} {'model':>8s} {'fold sd':>8s} {'prior':>8s} {'ratio':>6s}"
    lines = [head + (f" {'baseline':>8s} {'ratio':>6s}" if extra else "")]
    for label, row in scores.iterrows():
        # a label without positives has a prior loss of 0: no ratio
        ratio = f"{row['ratio']:6.2f}" if row["prior"] > 1e-6 else "   n/a"
        line = f"{label:18s} {row['model']:8.4f} {row['fold_std']:8.4f} {row['prior']:8.4f} {ratio}"
        if extra:
            to = f"{row['to_baseline']:6.2f}" if row["baseline"] > 1e-6 else "   n/a"
            line += f" {row['baseline']:8.4f} {to}"
        lines.append(line)
    if extra:
        lines.append(
            "baseline: blood-range pixel counts and a logistic regression per label, "
            "on the same folds (rsna.intensity)"
        )
    return "\n".join(lines)


def compare_stages(
    run_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    first: Evaluation,
    *,
    baseline: pd.DataFrame | None = None,
) -> pd.DataFrame | None:
    """Stage 1 (`first`, from :func:`evaluate`) and stage 2 OOF log loss side by side,
    and stage 2 against `baseline` (a reference that sees the neighbouring slices too).

    Per label and weighted, plotted in ``RUN/stages.png``; None when no stage-2 fold
    has OOF predictions yet.
    """
    second_dir = runs.stage_dir(run_dir, 2)
    if not runs.fold_dirs(second_dir, holding=runs.OOF):
        return None
    second = evaluate(second_dir, work_dir, baseline=baseline)
    both = first.scores[["model"]].rename(columns={"model": "stage 1"})
    smoothed = _smoothed(run_dir, work_dir)
    if smoothed is not None:
        both["stage 1 smoothed"] = smoothed.scores["model"]
    both["stage 2"] = second.scores["model"]
    both["prior"] = first.scores["prior"]
    both["stage 2 / stage 1"] = both["stage 2"] / both["stage 1"]
    if smoothed is not None:
        both["stage 2 / smoothed"] = both["stage 2"] / both["stage 1 smoothed"]
    if baseline is not None:
        both["baseline with neighbours"] = second.scores["baseline"]
        both["stage 2 / baseline"] = second.scores["to_baseline"]
    difference = second.per_fold - first.per_fold
    both["fold sd of difference"] = difference.std(ddof=1) if len(difference) > 1 else 0.0
    both["significant"] = significant(difference)
    from rsna.plots import plot_stage_comparison

    files.save_figure(plot_stage_comparison(both), Path(run_dir) / runs.STAGES_PNG)
    return both


def _smoothed(run_dir, work_dir) -> Evaluation | None:
    """Stage 1 smoothed along z (``rsna postprocess``), if it was made from stage 1's
    present predictions; a stale one is left out with a warning."""
    from rsna.smooth import is_current

    stage = runs.stage_dir(run_dir, 1)
    folder = stage / runs.SMOOTHED
    if not runs.fold_dirs(folder, holding=runs.OOF):
        return None
    if not is_current(stage):
        warnings.warn(
            f"{folder}: made from older stage-1 predictions, left out; rerun "
            "`rsna postprocess` to compare it",
            DataWarning,
            stacklevel=3,
        )
        return None
    return evaluate(folder, work_dir)


def format_stages(both: pd.DataFrame) -> str:
    """The table of :func:`compare_stages` as text."""
    table = both.to_string(float_format=lambda v: f"{v:.4f}")
    note = (
        "significant: the stages differ by more than one fold-to-fold standard deviation "
        "of their per-fold difference"
    )
    return f"\nstage 1 and stage 2 side by side (out-of-fold log loss):\n{table}\n{note}"
