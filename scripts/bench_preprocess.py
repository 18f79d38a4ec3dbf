"""Benchmark DICOM -> windowed uint8 on one core, and measure the window/resize order.

Writes a synthetic competition of 512x512 slices, pins this process to one core with
OpenCV on one thread, and times, warm (best of several passes over the same files):

* a raw read of each file's bytes (the ceiling);
* the naive kernel path: ``pydicom.dcmread().pixel_array``, HU in float, three float
  windows, then ``cv2.resize``;
* ``rsna.data.windowing.Preprocessor`` (what ``rsna preprocess`` and the generator use) to
  256x256 with three windows, uint8; and the one-shot ``preprocess()`` function.

Then it compares rsna's order (window at 512, then resize) with the other order (resize
HU, then window) on the same files. Usage::

    python scripts/bench_preprocess.py [--images 400] [--passes 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom

from rsna.data.dicom import check_file, read_hu
from rsna.data.synthetic import SynthConfig, make_competition
from rsna.data.windowing import (
    DEFAULT_WINDOWS,
    Preprocessor,
    apply_window,
    preprocess,
    resize_square,
)


def naive(path: Path, size: int = 256) -> np.ndarray:
    """What the popular kernels do: pydicom, float HU, float windows, resize."""
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    channels = []
    for w in DEFAULT_WINDOWS:
        x = np.clip(hu, w.lower, w.upper)
        channels.append((x - w.lower) / w.width)
    return cv2.resize(np.dstack(channels).astype(np.float32), (size, size))


def best_rate(fn, paths: list[Path], passes: int) -> float:
    """Images per second of the fastest of `passes` passes over `paths`."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def order_effect(paths: list[Path], size: int = 256) -> dict[str, float]:
    """How much resize-then-window differs from window-then-resize, in display levels."""
    diffs = []
    for p in paths:
        ours = preprocess(p, size=size).astype(np.int16)
        hu_small = resize_square(read_hu(p), size=size, pad_value=-1000.0)
        other = np.dstack([apply_window(hu_small, w) for w in DEFAULT_WINDOWS]).astype(np.int16)
        diffs.append(np.abs(ours - other))
    d = np.stack(diffs)
    return {
        "mean_abs_levels": float(d.mean()),
        "share_pixels_over_2_levels": float((d > 2).mean()),
        "p99_levels": float(np.percentile(d, 99)),
        "max_levels": float(d.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="about this many slices")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--core", type=int, default=0, help="the core to pin to")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        slices = 20
        patients = max(2, args.images // (slices * 1.5))
        config = SynthConfig(
            patients=int(patients), slices=slices, size=512, seed=7, test_fraction=0.0
        )
        make_competition(tmp, config)
        os.sync()  # flush the fresh files, so reads below are page-cache hits, not writeback
        train = Path(tmp) / "stage_2_train"
        paths = []
        for p in sorted(train.glob("*.dcm")):
            header, reason = check_file(p)
            if not reason and (header.rows, header.cols) == (512, 512):
                paths.append(p)  # skip the planted corrupt file and the odd sizes
        paths = paths[: args.images]

        os.sched_setaffinity(0, {args.core})
        cv2.setNumThreads(1)
        rates = {
            "raw read": best_rate(lambda p: p.read_bytes(), paths, args.passes),
            "naive (pydicom + float windows + resize)": best_rate(naive, paths, args.passes),
            "rsna Preprocessor (256, 3 windows, uint8)": best_rate(
                Preprocessor(size=256), paths, args.passes
            ),
            "rsna preprocess() one call at a time": best_rate(preprocess, paths, args.passes),
        }
        effect = order_effect(paths[:100])

    print(
        f"{len(paths)} slices of 512x512, one core (core {args.core}), best of {args.passes} passes"
    )
    for name, rate in rates.items():
        print(f"  {name:44s} {rate:9.0f} img/s")
    ours = rates["rsna Preprocessor (256, 3 windows, uint8)"]
    print(
        f"  ratio rsna / naive     {ours / rates['naive (pydicom + float windows + resize)']:.2f}x"
    )
    print(f"  ratio rsna / raw read  {ours / rates['raw read']:.2f}")
    print("order effect, window-then-resize vs resize-then-window, 256x256, display levels 0-255:")
    for name, value in effect.items():
        print(f"  {name:28s} {value:.4f}")


if __name__ == "__main__":
    main()
