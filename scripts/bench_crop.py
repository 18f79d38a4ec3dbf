"""What the head crop wins and costs on the demo's synthetic competition.

    python scripts/bench_crop.py --size 128

Prints the fraction of the network input covered by head pixels without and with
``crop="head"`` (and their ratio), the slices that kept the full view, and the time of
preprocessing every slice both ways, as a ratio measured in this run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rsna.data.crop import head_box, head_coverage
from rsna.data.dicom import DicomError, read_hu
from rsna.data.synthetic import SynthConfig, make_competition
from rsna.data.windowing import Preprocessor
from rsna.demo import DEMO_PATIENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="the network input (the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthConfig(patients=DEMO_PATIENTS, studies=2, slices=16, size=args.size, seed=args.seed)  # fmt: skip
        make_competition(Path(tmp), synth, workers=1)
        paths = sorted(Path(tmp).glob("stage_2_*/*.dcm"))
        full, cropped, no_head, readable = [], [], 0, []
        for path in paths:
            try:
                hu = read_hu(path)
            except DicomError:
                continue  # the competition's planted unreadable files
            readable.append(path)
            box = head_box(hu)
            no_head += box is None
            full.append(head_coverage(hu, size=args.size, box=None))
            cropped.append(head_coverage(hu, size=args.size, box=box))
        seconds = {}
        for crop in ("none", "head"):
            preprocessor = Preprocessor(size=args.size, crop=crop)
            start = time.perf_counter()
            for path in readable:
                preprocessor(path)
            seconds[crop] = time.perf_counter() - start
    print(
        f"{len(readable)} slices at {args.size}x{args.size}; {no_head} without a head (full view)"
    )
    print(f"head coverage: full view {np.mean(full):.3f}, head crop {np.mean(cropped):.3f}, ratio {np.mean(cropped) / np.mean(full):.2f}x")  # fmt: skip
    print(f"preprocessing time, head crop / full view: {seconds['head'] / seconds['none']:.2f}x")


if __name__ == "__main__":
    main()
