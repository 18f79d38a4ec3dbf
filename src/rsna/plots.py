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
