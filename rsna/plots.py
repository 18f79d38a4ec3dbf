"""Figures for reports and notebooks, drawn with Matplotlib's object API.

Functions return a :class:`matplotlib.figure.Figure` without touching pyplot's global
state, so they work in scripts, worker processes and notebooks alike;
:func:`rsna.files.save_figure` writes one as a PNG, atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsna.data.labels import LABELS, SHORT, prior

__all__ = [
    "plot_cooccurrence",
    "plot_label_losses",
    "plot_fold_balance",
    "plot_intercept_fix",
    "plot_label_rates",
    "plot_prediction_distribution",
    "plot_roc_pr",
    "plot_samples",
    "plot_saliency",
    "plot_scores",
    "plot_series_strip",
    "plot_stage_comparison",
    "plot_study",
    "plot_study_slices",
    "plot_training_curves",
    "plot_worst",
]


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_training_curves(history, *, title: str = "training"):
    """Loss and weighted log loss per epoch, train and validation, and each label's
    validation log loss where history.csv has it."""
    per_label = [label for label in LABELS if f"val_log_loss_{label}" in history]
    figure = _figure(15 if per_label else 10, 3.6)
    axes = figure.subplots(1, 3 if per_label else 2)
    epochs = history["epoch"] + 1
    if per_label:
        for label in per_label:
            axes[2].plot(epochs, history[f"val_log_loss_{label}"], "o-", label=label)
        axes[2].set_title(f"{title}: validation log loss by label")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("log loss")
        axes[2].legend(fontsize="small")
    for ax, metric, name in zip(
        axes[:2],
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


def plot_roc_pr(labels, predictions, *, where: str = "out-of-fold"):
    """Per-label ROC and precision-recall curves of predictions (`where` they are: OOF by
    default), AUCs in the legend."""
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
    roc.set_title(f"ROC, {where}")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    pr.set_title(f"Precision-recall, {where}")
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    roc.legend(fontsize=8)
    pr.legend(fontsize=8)
    return figure


# ------------------------------------------------------------------------ exploration


def _show(ax, image, title: str) -> None:
    """An (H, W, C) uint8 slice: its first three windows as RGB, or grey."""
    import numpy as np

    shown = image[..., :3] if image.ndim == 3 and image.shape[-1] >= 3 else np.squeeze(image)
    ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_label_rates(labels):
    """Positive rate of each label."""
    figure = _figure(6, 3.6)
    ax = figure.subplots()
    rates = prior(labels)
    ax.bar(LABELS, rates, color="tab:red")
    for i, rate in enumerate(rates):
        ax.text(i, rate, f"{rate:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_title(f"Positive rate per label ({len(labels)} images)")
    ax.set_xlabel("label")
    ax.set_ylabel("share of images")
    ax.tick_params(axis="x", labelrotation=30)
    return figure


def plot_cooccurrence(labels):
    """P(column label | row label): how often bleeds come together."""
    import numpy as np

    values = labels[list(LABELS)].to_numpy(float)
    counts = values.T @ values
    conditional = counts / np.maximum(np.diag(counts)[:, None], 1)
    figure = _figure(6.4, 5.4)
    ax = figure.subplots()
    image = ax.imshow(conditional, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=40, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(
                j,
                i,
                f"{conditional[i, j]:.2f}",
                ha="center",
                va="center",
                color="white",
                fontsize=7,
            )
    ax.set_title("Label co-occurrence: P(column | row)")
    ax.set_xlabel("label present too")
    ax.set_ylabel("given this label")
    figure.colorbar(image, ax=ax, label="conditional rate")
    return figure


def plot_intercept_fix(path, *, window=None):
    """A bad-intercept slice as stored (air wraps to about +3000 HU) and as fixed."""
    from rsna.data.dicom import read_hu
    from rsna.data.windowing import BRAIN, apply_window

    window = window or BRAIN
    figure = _figure(8, 4.2)
    for ax, fix, title in zip(
        figure.subplots(1, 2),
        (False, True),
        ("as stored (intercept 1)", "fixed (+1000, wrap, -1000)"),
        strict=True,
    ):
        hu = read_hu(path, fix_intercept=fix)
        ax.imshow(apply_window(hu, window), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{title}\nHU range {hu.min():.0f} to {hu.max():.0f}", fontsize=9)
        ax.set_xlabel("column (pixels)")
        ax.set_ylabel("row (pixels)")
    figure.suptitle(f"Bad-intercept file {Path(path).stem}, brain window")
    return figure


def plot_samples(images, labels, *, per_label: int = 4, seed: int = 0):
    """A grid of windowed slices: one row per subtype (positives), one row of negatives."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [*LABELS[:-1], "negative"]
    figure = _figure(2.0 * per_label, 2.1 * len(rows))
    axes = figure.subplots(len(rows), per_label, squeeze=False)
    for r, label in enumerate(rows):
        pool = (
            labels.index[labels["any"] == 0]
            if label == "negative"
            else labels.index[labels[label] == 1]
        )
        pool = [i for i in pool if i in images and images.readable(i)]
        chosen = rng.choice(pool, size=min(per_label, len(pool)), replace=False) if pool else []
        for c in range(per_label):
            ax = axes[r, c]
            if c < len(chosen):
                _show(ax, images.read(chosen[c]), chosen[c])
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, fontsize=9)
    figure.suptitle("Windowed slices (brain, subdural, soft tissue as RGB) by label")
    return figure


def plot_series_strip(images, metadata, labels, series_uid: str, *, max_slices: int = 16):
    """One series' slices in z order, each titled with its z and positive labels."""
    series = metadata[metadata["series_uid"] == series_uid].sort_values("slice_index")
    series = series.iloc[:: max(1, -(-len(series) // max_slices))]
    figure = _figure(1.8 * min(len(series), 8), 2.2 * -(-len(series) // 8))
    axes = figure.subplots(-(-len(series) // 8), min(len(series), 8), squeeze=False).ravel()
    for ax, (image_id, row) in zip(axes, series.iterrows(), strict=False):
        found = [
            SHORT[c] for c in LABELS[:-1] if image_id in labels.index and labels.at[image_id, c]
        ]
        title = f"z={row['z']:.1f}\n{','.join(found) or '-'}"
        if images.readable(image_id):
            _show(ax, images.read(image_id), title)
        else:
            ax.set_title(title + "\n(unreadable)", fontsize=8)
            ax.axis("off")
    for ax in axes[len(series) :]:
        ax.axis("off")
    figure.suptitle(f"Series {series_uid} in z order (patient {series['patient_id'].iloc[0]})")
    return figure


def plot_study(slices, *, threshold: float = 0.5, title: str = ""):
    """One study's probabilities along z: a panel per series, a line per label, against
    each slice's place in the series; stage 1's ``any`` dashed where `slices` has
    ``stage1_any`` (stage 2 predicted the others)."""
    groups = list(slices.groupby("series_uid", sort=True))
    figure = _figure(10, 2.6 * len(groups) + 0.4)
    axes = figure.subplots(len(groups), 1, squeeze=False).ravel()
    for ax, (uid, series) in zip(axes, groups, strict=True):
        series = series.sort_values("slice_index")
        hide = "" if ax is axes[0] else "_"  # one legend, in the first panel
        for label in LABELS:
            ax.plot(series["slice_index"], series[label], marker=".", label=hide + label)
        if "stage1_any" in series:
            ax.plot(
                series["slice_index"],
                series["stage1_any"],
                "k--",
                lw=1,
                label=hide + "any, stage 1",
            )
        ax.axhline(threshold, color="grey", lw=0.8, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"series {uid} ({len(series)} slices)", fontsize=9)
        ax.set_xlabel("slice (z order)")
        ax.set_ylabel("probability")
    axes[0].legend(fontsize=7, ncols=4, loc="upper left")
    figure.suptitle(title or f"study {slices['study_uid'].iloc[0]}")
    return figure


def _slice_title(row, labels: list[str]) -> str:
    """z, the known labels (``?`` for a test image) and each stage's any."""
    known = [SHORT[c] for c in labels if c != "any" and row[f"label_{c}"] == 1]
    truth = "?" if np.isnan(row["label_any"]) else (",".join(known) or "-")
    stages = "/".join("--" if np.isnan(row[f"stage{s}_any"]) else f"{row[f'stage{s}_any']:.2f}" for s in (1, 2))  # fmt: skip
    return f"z={row['z']:.1f} {truth}\nany {stages}"


def plot_study_slices(images, slices, *, max_slices: int = 48, explained=None):
    """A study through z (:func:`rsna.view.study_slices`): its slices (every k-th past
    `max_slices`), each titled with z, its labels and stage 1's / stage 2's ``any``,
    above a strip of both stages' ``any`` and the labelled ``any`` along z, and, for
    each image of `explained` (ID -> (slice, map)), its ``any`` saliency."""
    explained = explained or {}
    shown = slices.iloc[:: max(1, -(-len(slices) // max_slices))]
    columns = min(len(shown), 8)
    rows = -(-len(shown) // columns)
    heights = [2.1 * rows, 2.6] + ([2.4] if explained else [])
    figure = _figure(max(1.8 * columns, 2.4 * len(explained)), sum(heights))
    parts = figure.subfigures(len(heights), 1, height_ratios=heights)
    grid, strip = parts[0], parts[1]
    axes = grid.subplots(rows, columns, squeeze=False).ravel()
    for ax, (image_id, row) in zip(axes, shown.iterrows(), strict=False):
        if row["readable"] and image_id in images:
            _show(ax, images.read(image_id), _slice_title(row, list(LABELS)))
        else:
            ax.set_title(_slice_title(row, list(LABELS)) + "\n(unreadable)", fontsize=8)
            ax.axis("off")
    for ax in axes[len(shown) :]:
        ax.axis("off")
    ax = strip.subplots()
    position = np.arange(len(slices))
    for stage, style in ((1, "-"), (2, "--")):
        values = slices[f"stage{stage}_any"]
        if values.notna().any():
            ax.plot(position, values, style, marker=".", label=f"any, stage {stage}")
    if slices["label_any"].notna().any():
        ax.step(position, slices["label_any"], "k:", where="mid", label="any, label")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("slice in z order")
    ax.set_ylabel("probability")
    missing = [f"stage {s}" for s in (1, 2) if slices[f"stage{s}_any"].isna().all()]
    ax.set_title("any along z" + (f" ({' and '.join(missing)}: no predictions)" if missing else ""))
    ax.legend(fontsize=8, loc="upper left")
    if explained:
        for ax, (image_id, (image, heat)) in zip(
            parts[2].subplots(1, len(explained), squeeze=False).ravel(),
            explained.items(),
            strict=True,
        ):
            row = slices.loc[image_id]
            _show(ax, image, f"saliency of any, z={row['z']:.1f}")
            ax.imshow(
                heat, cmap="inferno", alpha=0.6, vmin=0, vmax=float(np.quantile(heat, 0.995)) or 1.0
            )
    figure.suptitle(
        f"Study {slices.attrs.get('study_uid', '')} (patient {slices.attrs.get('patient_id', '')}): "
        f"{len(slices)} slices, {slices['split'].iloc[0]}"
    )
    return figure


def plot_saliency(image, maps, probabilities, *, title: str = ""):
    """A windowed slice and, for each label, its saliency (:mod:`rsna.training.saliency`)
    overlaid in colour, titled with the label's probability."""
    figure = _figure(2.4 * (len(LABELS) + 1), 2.9)
    axes = figure.subplots(1, len(LABELS) + 1)
    _show(axes[0], image, "windowed slice")
    top = max(float(np.quantile(m, 0.995)) for m in maps) or 1.0
    for ax, label, m, p in zip(axes[1:], LABELS, maps, probabilities, strict=True):
        _show(ax, image, f"{label}\np={float(p):.2f}")
        ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=top)
    figure.suptitle(title or "SmoothGrad saliency per label")
    return figure


def plot_fold_balance(table):
    """Positive rate of each label, per fold (from rsna.data.folds.fold_table)."""
    import numpy as np

    folds = [name for name in table.index if name != "all"]
    figure = _figure(9, 3.8)
    ax = figure.subplots()
    width = 0.8 / len(folds)
    for k, fold in enumerate(folds):
        positions = np.arange(len(LABELS)) + (k - (len(folds) - 1) / 2) * width
        ax.bar(
            positions,
            table.loc[fold, list(LABELS)],
            width,
            label=f"{fold} ({int(table.loc[fold, 'patients'])} patients)",
        )
    ax.plot(
        np.arange(len(LABELS)),
        table.loc["all", list(LABELS)],
        "k_",
        markersize=25,
        label="all folds",
    )
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_title("Fold balance: positive rate per label")
    ax.set_xlabel("label")
    ax.set_ylabel("share of images")
    ax.legend(fontsize=8)
    return figure


# ---------------------------------------------------------------------------- results


def plot_label_losses(table, *, columns: dict[str, str], title: str):
    """Log loss per label (the rows of `table`) as grouped bars, one bar per column.

    Args:
        table: rows are labels (and ``weighted``), columns are log losses.
        columns: the columns to draw, in order, and each one's legend label.
        title: the figure's title.
    """
    import numpy as np

    figure = _figure(8 + len(columns) / 2, 3.8)
    ax = figure.subplots()
    positions = np.arange(len(table.index))
    width = 0.8 / len(columns)
    for k, (column, label) in enumerate(columns.items()):
        ax.bar(positions + (k - (len(columns) - 1) / 2) * width, table[column], width, label=label)
    ax.set_xticks(positions, list(table.index), rotation=30)
    ax.set_title(title)
    ax.set_xlabel("label")
    ax.set_ylabel("log loss (lower is better)")
    ax.legend()
    return figure


def plot_scores(scores):
    """Per-label log loss of the model next to the prior (from rsna.evaluate.evaluate)."""
    return plot_label_losses(
        scores,
        columns={"model": "model (out-of-fold)", "prior": "prior (label mean)"},
        title="Log loss per label: model against prior",
    )


def plot_prediction_distribution(predictions):
    """Histogram of predicted probabilities per label (log-scaled counts)."""
    import numpy as np

    figure = _figure(10, 5)
    axes = figure.subplots(2, 3).ravel()
    bins = np.linspace(0, 1, 41)
    for ax, label in zip(axes, LABELS, strict=True):
        ax.hist(predictions[label], bins=bins, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(f"{label}: mean {predictions[label].mean():.3f}", fontsize=9)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("images")
    figure.suptitle(f"Predicted probabilities ({len(predictions)} images)")
    return figure


def plot_worst(images, predictions, labels, *, n: int = 8):
    """The images with the highest weighted log loss: what the model gets wrong."""
    from rsna.metrics import WEIGHTS, log_losses

    common = predictions.index.intersection(labels.index)
    losses = (log_losses(labels.loc[common], predictions.loc[common]) * WEIGHTS).sum(
        axis=1
    ) / WEIGHTS.sum()
    order = losses.argsort()[::-1][:n]
    figure = _figure(2.2 * min(n, 4), 2.6 * -(-n // 4))
    axes = figure.subplots(-(-n // 4), min(n, 4), squeeze=False).ravel()
    for ax, k in zip(axes, order, strict=False):
        image_id = common[k]
        truth = ",".join(SHORT[c] for c in LABELS[:-1] if labels.at[image_id, c]) or "none"
        title = f"{image_id}\ntruth {truth}\np(any)={predictions.at[image_id, 'any']:.2f}, loss {losses[k]:.2f}"
        if images.readable(image_id):
            _show(ax, images.read(image_id), title)
        else:
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    for ax in axes[len(order) :]:
        ax.axis("off")
    figure.suptitle("Highest out-of-fold loss")
    return figure


def plot_stage_comparison(table):
    """Out-of-fold log loss per label: stage 1, stage 1 smoothed along z (when the table
    has it), stage 2 and the prior."""
    names = ("stage 1", "stage 1 smoothed", "stage 2", "prior")
    return plot_label_losses(
        table,
        columns={name: name for name in names if name in table.columns},
        title="Out-of-fold log loss per label: slice model, series model, prior",
    )
