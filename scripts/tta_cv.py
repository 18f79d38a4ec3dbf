"""Which test-time views pay: re-score a trained run's OOF with other ``predict.tta`` sets.

Each fold's ``best.keras`` predicts its own out-of-fold images once per view; every TTA
set is then the mean of its views' probabilities, scored with the competition metric
against the labels, per fold and overall. Nothing is retrained or written.

    python scripts/tta_cv.py work/runs/demo --sets "none" "none,hflip" "none,hflip,vflip,transpose" "none,random_crop:8"
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from rsna import runs
from rsna.config import load_config
from rsna.data.labels import LABELS
from rsna.data.metadata import read_prepared_labels
from rsna.data.views import expand_views
from rsna.evaluate import read_fold_oof
from rsna.metrics import weighted_log_loss
from rsna.training.quiet import load_tensorflow_quietly, tensorflow_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (holds config.toml and fold_*/best.keras)")
    parser.add_argument("--sets", nargs="+", default=["none", "none,hflip"])
    args = parser.parse_args()
    tensorflow_defaults()
    load_tensorflow_quietly()
    from rsna.training.models import load_model

    config = load_config(f"{args.run}/{runs.CONFIG_FILE}")
    sets = {text: expand_views(text.split(",")) for text in args.sets}
    views = sorted({v for chosen in sets.values() for v in chosen}, key=lambda v: v.label)
    truth = read_prepared_labels(config.data.work_dir)
    scores: dict[str, dict[int, float]] = {text: {} for text in sets}
    merged: dict[str, list[pd.DataFrame]] = {text: [] for text in sets}
    for k, oof in read_fold_oof(args.run).items():
        model = load_model(runs.fold_dir(args.run, k) / runs.BEST_MODEL)
        ids = list(oof.index)
        seen = {}
        for view in views:
            seen[view] = _one_view(model, ids, config, view)
        for text, chosen in sets.items():
            mean = np.mean([seen[v] for v in chosen], axis=0)
            frame = pd.DataFrame(mean, index=ids, columns=list(LABELS))
            merged[text].append(frame)
            scores[text][k] = weighted_log_loss(truth.loc[ids, list(LABELS)].to_numpy(), mean)
        print(f"fold {k}: " + ", ".join(f"{t} {s[k]:.4f}" for t, s in scores.items()), flush=True)
    first = next(iter(sets))
    print(f"\n{'views':40s} {'CV':>8s} {'ratio':>6s} {'fold sd of diff':>15s}")
    base = pd.concat(merged[first])
    base_cv = weighted_log_loss(truth.loc[base.index, list(LABELS)].to_numpy(), base.to_numpy())
    for text in sets:
        frame = pd.concat(merged[text])
        cv = weighted_log_loss(truth.loc[frame.index, list(LABELS)].to_numpy(), frame.to_numpy())
        diff = pd.Series(scores[text]) - pd.Series(scores[first])
        print(f"{text:40s} {cv:8.4f} {cv / base_cv:6.3f} {diff.std(ddof=1):15.4f}")


def _one_view(model, ids, config, view) -> np.ndarray:
    """The model's probabilities for `ids` through one view."""
    from rsna.training.generator import DataGenerator, PaddedBatches, trim

    batch = config.predict.batch_size
    gen = DataGenerator.from_config(config, ids, batch_size=batch, to_fit=False, view=view)
    return trim(model.predict(PaddedBatches(gen, rows=batch), verbose=0), len(ids))


if __name__ == "__main__":
    main()
