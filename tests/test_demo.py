"""rsna demo: the README's first command, end to end (slow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsna.data.labels import LABELS

pytestmark = pytest.mark.slow


def test_demo_learns_the_planted_bleeds_and_stage_2_improves_on_stage_1(tmp_path):
    """The README's first command, end to end, both stages (about six minutes).

    The bounds hold with a margin on any CPU: a learned score changes with the instruction
    set and oneDNN, so the test asserts what the demo shows everywhere (both stages well
    below the prior and below the intensity baseline, stage 2 not worse than stage 1), not
    this machine's figures.
    """
    from rsna.demo import run_demo

    result = run_demo(tmp_path / "demo")
    evaluation = result["evaluation"]
    assert evaluation["ratio_to_prior"] <= 0.75, evaluation  # 0.61 here
    assert evaluation["ratio_to_baseline"] < 1.0, evaluation  # 0.86 here
    assert result["test_scores"]["stage 1"] < 0.6 * evaluation["prior_weighted_log_loss"]
    weighted = result["stages"].loc["weighted"]
    assert weighted["stage 2 / stage 1"] <= 1.05, result["stages"]  # 0.86 here
    assert weighted["stage 2 / baseline"] <= 0.9, result["stages"]  # 0.74 here
    # z-smoothing, the cheapest series model, helps stage 1 (0.90 here)
    assert weighted["stage 1 smoothed"] <= weighted["stage 1"], result["stages"]
    assert result["test_scores"]["stage 2"] <= 1.05 * result["test_scores"]["stage 1"]
    # per-fold spread is reported, and no fold collapses: each within 2x the best fold
    per_fold = pd.DataFrame(evaluation["per_fold"]).T["weighted"]
    assert per_fold.max() <= 2 * per_fold.min(), per_fold
    run = tmp_path / "demo" / "work" / "runs" / "demo"
    assert (run / "submission.csv").exists() and (run / "stage2" / "submission.csv").exists()
    assert (run / "stages.png").exists()
    # the external set: new patients in CQ500's layout, scored at study level (AUC 1.000 here)
    external = result["external"].loc["any"]
    assert external["auc"] >= 0.8 and external["auc_low"] <= external["auc"], result["external"]
    assert (tmp_path / "demo" / "external" / "external.json").exists()
    # where the model looks: the any map's mass inside the planted bleed, against the
    # bleed's share of the head (a median 35x, 13x the least, on this machine)
    ratios = _saliency_over_share(tmp_path / "demo", n=12)
    assert np.median(ratios) >= 5 and (ratios > 2).sum() >= 10, ratios


def _saliency_over_share(out, *, n: int) -> np.ndarray:
    """For n positive training slices of regular size (so the DICOM's grid is the
    model's), the `any` saliency inside the planted bleed over the bleed's share of the
    head (HU > -200), each from the fold model that did not train on it."""
    from rsna.data.dicom import read_hu
    from rsna.data.metadata import data_dir, read_metadata, read_prepared_labels
    from rsna.data.synthetic import MANIFEST, SynthConfig, bleed_masks
    from rsna.demo import demo_config
    from rsna.files import read_json
    from rsna.training.fold import config_folds
    from rsna.training.generator import DataGenerator
    from rsna.training.models import load_model
    from rsna.training.saliency import saliency, saliency_mass

    config = demo_config(out)
    synth = SynthConfig(**read_json(out / "data" / MANIFEST)["config"])
    meta = read_metadata(config.data.work_dir)
    labels = read_prepared_labels(config.data.work_dir)
    size = config.image.size
    regular = meta[(meta["rows"] == size) & (meta["cols"] == size) & meta["readable"]]
    positive = [i for i in labels.index[labels["any"] == 1] if i in regular.index][:200]
    masks = bleed_masks(synth, positive)
    chosen = [i for i in positive if masks[i].sum() >= 40][:n]
    folds, models, ratios = config_folds(config), {}, []
    for image_id in chosen:
        k = int(folds[image_id])
        if k not in models:
            models[k] = load_model(config.fold_dir(k) / "best.keras")
        x = DataGenerator.from_config(config, [image_id], batch_size=1, to_fit=False)[0]
        maps = saliency(models[k], x[0], seed=0)
        head = read_hu(data_dir(config.data.work_dir) / meta.at[image_id, "file"]) > -200
        inside = saliency_mass(maps, masks[image_id])[list(LABELS).index("any")]
        ratios.append(inside / (masks[image_id].sum() / head.sum()))
    return np.array(ratios)
