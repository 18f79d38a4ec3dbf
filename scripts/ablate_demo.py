"""Re-decide the demo's options: each one at another value, on finished demo runs of
several seeds (issue 23, step 3; issue 25 with ``--tricks``).

    rsna demo --out ablate/s0 --seed 0        # and --seed 1, --seed 2
    python scripts/ablate_demo.py ablate/s0 ablate/s1 ablate/s2 [--stage1]
    python scripts/ablate_demo.py ablate/s0 ablate/s1 ablate/s2 --tricks

Each variant retrains on a copy of a demo's work folder, so the demos stay as they are:
the series-model options retrain stage 2 only, on the demo's stage-1 embeddings;
``--stage1`` adds ``augment.interpolation``, which retrains stage 1 too (about four
minutes a seed on 2 cores). For every variant and seed it prints the weighted CV and its
fold standard deviation, then the mean change against the shipped demo config over the
seeds; a variant earns its place in a shipped config only where it lowers the CV by more
than the fold standard deviation. The variants are the values once tuned on the first
phantoms (the README's table went the other way, from those values back to the
published ones, with this script at commit bd4b243).

``--tricks`` instead tries the winners' stage-1 options of issue 25 that need a retrain
(snapshots, three neighbours in one window, study sampling at the demo's epochs and at
about its time), printing stage 1's CV beside stage 2's. The views, the smoothing
and the stacker's patient features need no retrain: ``scripts/tta_cv.py``, ``rsna
postprocess`` and ``rsna blend --stack lightgbm [--no-patient]`` score them on the demos.

``--test`` adds each stage's score on the synthetic test set, after the CV: ``best.keras``
is the epoch that scored best on the very fold its OOF comes from, so the OOF flatters it
against options that are not picked on that fold (snapshots of the last epochs).
``--only TEXT`` keeps the variants whose name holds TEXT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rsna.blend import read_submission
from rsna.data.cache import build_cache
from rsna.data.labels import read_labels
from rsna.data.synthetic import TEST_LABELS
from rsna.demo import demo_config
from rsna.evaluate import evaluate
from rsna.metrics import weighted_log_loss
from rsna.runs import EVALUATE_JSON, SUBMISSION, stage_dir

#: The values once tuned on the first phantoms, against the published choices the demo
#: ships: (the first stage to retrain, overrides).
VARIANTS: dict[str, tuple[int, dict]] = {
    "sequence.bags = 3": (2, {"sequence.bags": 3}),
    "sequence.any_coupling = 0.5": (2, {"sequence.any_coupling": 0.5}),
    "sequence.subtype_l2 = 0.05": (2, {"sequence.subtype_l2": 0.05}),
    "sequence.position = false": (2, {"sequence.position": False}),
    "augment.interpolation = nearest": (1, {"augment.interpolation": "nearest"}),
}

#: Issue 25's stage-1 options, each against the shipped demo config.
TRICKS: dict[str, tuple[int, dict]] = {
    "train.snapshots = 3": (1, {"train.snapshots": 3}),
    "image.channels = neighbours (subdural)": (
        1,
        {"image.channels": "neighbours", "image.context": 1, "image.windows": ["subdural"]},
    ),
    "train.sampling = study, 16 epochs": (1, {"train.sampling": "study"}),
    # 4 of about 34 slices a series: 4x the epochs take about the demo's time, with
    # half its training steps (validation still covers every slice each epoch)
    "train.sampling = study, 64 epochs": (
        1,
        {"train.sampling": "study", "train.epochs": 64, "train.patience": 64},
    ),
}


def synthetic_test_score(submission: Path, demo: Path) -> float:
    """A submission's weighted log loss on the synthetic test set's planted labels: the
    score no fold's model selection has seen (``best.keras`` is chosen on the OOF)."""
    truth = read_labels(demo / "data" / TEST_LABELS)
    return weighted_log_loss(truth, read_submission(submission).loc[truth.index])


def cv_of(stage_folder: Path, work_dir: Path) -> tuple[float, float]:
    """A stage's weighted CV and its fold standard deviation."""
    result = evaluate(stage_folder, work_dir)
    return float(result.report["weighted_log_loss"]), float(result.per_fold["weighted"].std(ddof=1))


def read_cv(stage_folder: Path) -> tuple[float, float]:
    """What a finished demo measured for a stage, read, not evaluated again in place."""
    report = json.loads((stage_folder / EVALUATE_JSON).read_text())
    folds = [row["weighted"] for row in report["per_fold"].values()]
    return report["weighted_log_loss"], float(np.std(folds, ddof=1))


def score(
    demo: Path, overrides: dict, stage: int, scratch: Path, *, test: bool = False
) -> dict[int, tuple[float, ...]]:
    """Weighted CV and fold SD of each retrained stage after retraining `stage` (and
    later) with `overrides`; with `test`, the stage's synthetic test score too."""
    from rsna.training import runner

    copy = scratch / demo.name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(demo / "work", copy / "work")
    config = demo_config(copy, overrides=overrides)
    scores = {}
    if stage == 1:
        if config.data.cache:  # a variant with other windows reads another store
            build_cache(config.data.work_dir, config.image.spec, codec=config.codec)
        runner.train(config, "all", verbose=0, force=True)
        scores[1] = cv_of(stage_dir(config.run_dir, 1), config.data.work_dir)
    runner.train(config, "all", stage=2, verbose=0, force=True)
    scores[2] = cv_of(stage_dir(config.run_dir, 2), config.data.work_dir)
    if test:
        for s in scores:
            result = runner.predict(config, stage=s)
            scores[s] += (synthetic_test_score(result.submission, demo),)
    return scores


def cell(values: tuple[float, ...]) -> str:
    """`CV (fold sd)`, and `/ test` where the test score was taken."""
    text = f"{values[0]:.4f} ({values[1]:.4f})"
    return text + (f" / {values[2]:.4f}" if len(values) > 2 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demos", nargs="+", type=Path, help="finished `rsna demo --out` folders")
    parser.add_argument(
        "--stage1", action="store_true", help="also retrain stage 1 (interpolation)"
    )
    parser.add_argument("--tricks", action="store_true", help="issue 25's stage-1 options instead")
    parser.add_argument(
        "--test", action="store_true", help="also predict and score the synthetic test set"
    )
    parser.add_argument("--only", default="", help="the variants whose name holds this text")
    args = parser.parse_args()
    variants = {
        name: v for name, v in (TRICKS if args.tricks else VARIANTS).items() if args.only in name
    }
    shown = (1, 2) if args.tricks or args.stage1 else (2,)
    shipped = {}
    for demo in args.demos:
        for s in shown:
            folder = stage_dir(demo_config(demo).run_dir, s)
            shipped[demo, s] = read_cv(folder)
            if args.test:
                shipped[demo, s] += (synthetic_test_score(folder / SUBMISSION, demo),)
    print(
        "| variant | stage | "
        + " | ".join(f"{d.name} CV (fold sd){' / test' * args.test}" for d in args.demos)
        + " | mean change | fold sd | helps |"
    )
    print("|---|---|" + "---|" * (len(args.demos) + 3))
    for s in shown:
        row = " | ".join(cell(shipped[d, s]) for d in args.demos)
        print(f"| shipped demo config | {s} | {row} | | | |")
    with tempfile.TemporaryDirectory() as scratch:
        for name, (stage, overrides) in variants.items():
            if stage == 1 and not (args.stage1 or args.tricks):
                continue
            scores = {
                d: score(d, overrides, stage, Path(scratch), test=args.test) for d in args.demos
            }
            for s in sorted(scores[args.demos[0]]):
                change = np.mean([scores[d][s][0] - shipped[d, s][0] for d in args.demos])
                fold_sd = np.mean([shipped[d, s][1] for d in args.demos])
                row = " | ".join(cell(scores[d][s]) for d in args.demos)
                helps = "yes" if -change > fold_sd else "no"
                print(
                    f"| {name} | {s} | {row} | {change:+.4f} | {fold_sd:.4f} | {helps} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
