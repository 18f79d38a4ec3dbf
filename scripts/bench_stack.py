"""What `rsna blend --stack lightgbm` costs: time it on N synthetic slices, project to 753k.

    python scripts/bench_stack.py --slices 50000 --runs 2

Random logits in series of 32 slices (one a study; one study in 7 a patient's follow-up)
stand in for runs' predictions; the time is the
features plus 6 labels x 5 folds of trees, and the projection is linear in slices (the
trees' histogram cost is; the feature building is).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from rsna.data.labels import LABELS
from rsna.stack import StackParams, stack_runs

COMPETITION_SLICES = 752_803  # stage-2 training images (FACTS.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.slices
    ids = pd.Index([f"ID_{k:09d}" for k in range(n)], name="image_id")
    slices = pd.DataFrame(
        {"series_uid": [f"S{k // 32}" for k in range(n)], "slice_index": np.arange(n) % 32},
        index=ids,
    )
    slices["z"] = 5.0 * slices["slice_index"]
    series = np.arange(n) // 32
    slices["study_uid"] = [f"T{k}" for k in series]  # one series a study, as in RSNA
    slices["patient_id"] = [f"P{k - (k % 7 == 6)}" for k in series]  # 1 in 7 a follow-up
    truth = pd.DataFrame((rng.random((n, 6)) < 0.1).astype(float), index=ids, columns=list(LABELS))
    logits = {
        f"run{r}": pd.DataFrame(
            rng.normal(-2, 2, (n, 6)) + 3 * truth.to_numpy(), index=ids, columns=list(LABELS)
        )
        for r in range(args.runs)
    }
    folds = pd.Series(np.arange(n) // 32 % args.folds, index=ids)
    scale = COMPETITION_SLICES / n
    took = {}
    for patient in (True, False):
        start = time.perf_counter()
        params = StackParams(patient=patient)
        stack_runs(logits, logits, truth, folds, slices, slices, params=params)
        took[patient] = seconds = time.perf_counter() - start
        what = "with" if patient else "without"
        print(
            f"{n} slices, {args.runs} runs, {args.folds} folds, {what} the patient context: "
            f"{seconds:.1f} s; projected for {COMPETITION_SLICES} slices: "
            f"{seconds * scale / 60:.0f} min on this machine"
        )
    print(f"the patient context costs {took[True] / took[False]:.2f}x the time without it")


if __name__ == "__main__":
    main()
