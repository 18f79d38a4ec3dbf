"""Figures for reports and notebooks, drawn with Matplotlib's object API.

Functions return a :class:`matplotlib.figure.Figure` without touching pyplot's global
state, so they work in scripts, worker processes and notebooks alike;
:func:`save_figure` writes a PNG atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from rsna import files
from rsna.labels import LABELS


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write `figure` as a PNG, atomically."""
    with files.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    return Path(path)


def plot_prepare_summary(report: dict):
    """Label rates, and images per header group with their `any` rate."""
    figure = _figure(10, 3.6)
    left, right = figure.subplots(1, 2)
    rates = [report["label_rates"][c] for c in LABELS]
    left.bar(LABELS, rates, color="tab:red")
    left.set_title("Positive rate per label (train)")
    left.set_xlabel("label")
    left.set_ylabel("share of images")
    left.tick_params(axis="x", labelrotation=30)
    groups = report["header_groups"]
    names = list(groups)
    right.bar(names, [groups[n] for n in names], color="tab:blue", label="images")
    right.set_title("Header groups (BitsStored, PixelRepresentation)")
    right.set_xlabel("group")
    right.set_ylabel("images")
    twin = right.twinx()
    by_group = report["positive_rate_by_group"]
    twin.plot(
        names,
        [by_group.get(n, float("nan")) for n in names],
        "o-",
        color="tab:red",
        label="any rate",
    )
    twin.set_ylabel("any-positive rate")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, ["images", "any rate"], loc="upper left")
    return figure


def plot_training_curves(history, *, title: str = "training"):
    """Loss and weighted log loss per epoch, train and validation (from history.csv)."""
    figure = _figure(10, 3.6)
    axes = figure.subplots(1, 2)
    epochs = history["epoch"] + 1
    for ax, metric, name in zip(
        axes,
        ("loss", "weighted_log_loss"),
        ("loss (weighted BCE)", "weighted log loss"),
        strict=True,
    ):
        if metric in history:
            ax.plot(epochs, history[metric], "o-", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
    return figure


def plot_roc_pr(labels, predictions):
    """Per-label ROC and precision-recall curves of OOF predictions, AUCs in the legend."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    figure = _figure(11, 4.4)
    roc, pr = figure.subplots(1, 2)
    for label in LABELS:
        y, p = labels[label].to_numpy(), predictions.loc[labels.index, label].to_numpy()
        if y.min() == y.max():
            continue  # no positives (or no negatives): no curve
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        roc.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y, p):.3f})")
        pr.plot(recall, precision, label=f"{label} (AP {average_precision_score(y, p):.3f})")
    roc.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    roc.set_title("ROC, out-of-fold")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    pr.set_title("Precision-recall, out-of-fold")
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    roc.legend(fontsize=8)
    pr.legend(fontsize=8)
    return figure
