"""rsna.plots: every figure has titles, labelled axes and legends where it has several series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from harness import TINY_CODEC, TINY_SPEC
from rsna import files, plots
from rsna.data.cache import ImageCache, cache_dir
from rsna.data.folds import fold_table, read_folds
from rsna.data.labels import LABELS
from rsna.data.metadata import plot_report, read_metadata, read_prepared_labels
from rsna.files import save_figure


def check(figure) -> None:
    suptitle = figure.get_suptitle()
    for ax in figure.axes:
        if not ax.get_visible() or not ax.axison and not ax.images:
            continue
        if ax.get_label() == "<colorbar>":
            continue
        twins = ax.get_shared_x_axes().get_siblings(ax)  # a twinx axes shares the host's title
        assert any(a.get_title() for a in twins) or suptitle, "an axes without a title"
        if not ax.images:
            assert ax.get_xlabel() or ax.get_ylabel(), f"axes {ax.get_title()!r} has no axis labels"
        labelled = [a for a in ax.lines + ax.containers if not str(a.get_label()).startswith("_")]
        if len(labelled) > 1:
            assert ax.get_legend() is not None, (
                f"axes {ax.get_title()!r} has {len(labelled)} series and no legend"
            )


@pytest.fixture(scope="module")
def data(tiny_work):
    return {
        "meta": read_metadata(tiny_work),
        "labels": read_prepared_labels(tiny_work),
        "folds": read_folds(tiny_work / "folds.csv"),
        "images": ImageCache(cache_dir(tiny_work, TINY_SPEC, TINY_CODEC)),
    }


def test_exploration_figures(data, tiny_work, tiny_competition):
    meta, labels, images = data["meta"], data["labels"], data["images"]
    check(plot_report(files.read_json(tiny_work / "prepare_report.json")))
    check(plots.plot_label_rates(labels))
    check(plots.plot_cooccurrence(labels))
    check(plots.plot_samples(images, labels, per_label=2))
    series = meta.loc[labels.index[labels["any"] == 1][0], "series_uid"]
    check(plots.plot_series_strip(images, meta, labels, series))
    check(plots.plot_fold_balance(fold_table(data["folds"], labels, meta)))
    bad = tiny_competition.manifest["bad_intercept"][0]
    folder = "stage_2_train" if bad in labels.index else "stage_2_test"
    check(plots.plot_intercept_fix(tiny_competition.root / folder / f"{bad}.dcm"))


def test_result_figures(data, tmp_path):
    labels = data["labels"]
    rng = np.random.default_rng(0)
    predictions = pd.DataFrame(
        rng.uniform(0.01, 0.99, (len(labels), 6)), index=labels.index, columns=list(LABELS)
    )
    history = pd.DataFrame(
        {
            "epoch": [0, 1],
            "loss": [0.5, 0.4],
            "val_loss": [0.6, 0.5],
            "weighted_log_loss": [0.5, 0.4],
            "val_weighted_log_loss": [0.6, 0.5],
            **{f"val_log_loss_{label}": [0.3, 0.2] for label in LABELS},
        }
    )
    scores = pd.DataFrame({"model": [0.1] * 7, "prior": [0.2] * 7}, index=[*LABELS, "weighted"])
    for figure in (
        plots.plot_training_curves(history),
        plots.plot_scores(scores),
        plots.plot_prediction_distribution(predictions),
        plots.plot_worst(data["images"], predictions, labels, n=4),
        plots.plot_roc_pr(labels, predictions),
    ):
        check(figure)
    assert len(plots.plot_training_curves(history).axes) == 3
    assert len(plots.plot_training_curves(history.iloc[:, :5]).axes) == 2  # an older history.csv
    path = save_figure(plots.plot_scores(scores), tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_has_one_panel_per_series_in_z_order():
    rng = np.random.default_rng(0)
    slices = pd.DataFrame(
        {
            "study_uid": "s",
            "series_uid": ["b", "a", "a", "b", "a"],
            "slice_index": [1, 2, 0, 0, 1],
            **{label: rng.uniform(size=5) for label in [*LABELS, "stage1_any"]},
        }
    )
    figure = plots.plot_study(slices, threshold=0.4)
    check(figure)
    assert [ax.get_title() for ax in figure.axes] == ["series a (3 slices)", "series b (2 slices)"]
    line = figure.axes[0].lines[LABELS.index("any")]
    assert line.get_xdata().tolist() == [0, 1, 2]
    np.testing.assert_allclose(line.get_ydata(), slices["any"].iloc[[2, 4, 1]])
    assert len(figure.axes[0].lines) == len(LABELS) + 2  # the labels, stage 1's any, the threshold


def test_saliency_has_the_slice_and_a_panel_per_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    maps = rng.uniform(size=(len(LABELS), 16, 16))
    figure = plots.plot_saliency(image, maps, rng.uniform(size=len(LABELS)), title="t")
    check(figure)
    assert len(figure.axes) == len(LABELS) + 1
    assert [ax.get_title().split()[0] for ax in figure.axes[1:]] == list(LABELS)
    assert all(len(ax.images) == 2 for ax in figure.axes[1:])  # the slice and its map


def test_the_checker_catches_a_bare_figure():
    figure = Figure(figsize=(3, 3))
    ax = figure.subplots()
    ax.plot([0, 1], label="a")
    ax.plot([1, 0], label="b")
    with pytest.raises(AssertionError):
        check(figure)
