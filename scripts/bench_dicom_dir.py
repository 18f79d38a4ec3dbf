"""What `rsna predict --dicom-dir` costs per 1,000 slices: the header scan and the prediction.

    python scripts/bench_dicom_dir.py RUN/config.toml --slices 1000 --size 512

Writes a synthetic folder of about `--slices` CT slices at `--size` (real CT is 512), then
times the scan (every header read once, all cores), the windowing of every slice (once,
all cores: a folder that fits in memory is read once, not once per fold and view), and
the whole prediction of the run's
stage 1 and, where trained, stage 2 (every fold, view and snapshot), and prints seconds
per 1,000 slices and the scan's share of the total. The model is the run's; on 2 cores
the demo's small CNN is cheap, so the DICOM reading dominates.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from rsna.config import load_config
from rsna.data.sources import read_windowed
from rsna.data.studies import scan_studies
from rsna.data.synthetic import SynthConfig, make_competition
from rsna.errors import DataWarning
from rsna.training.external import predict_dicom_dir, predicted_stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a trained run's config (RUN/config.toml)")
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "studies"
        patients = max(1, round(args.slices / 30))
        make_competition(
            folder, SynthConfig(patients=patients, studies=1, slices=30, size=args.size)
        )
        start = time.perf_counter()
        scan = scan_studies(folder)
        scanned = time.perf_counter() - start
        n = len(scan.slices)
        start = time.perf_counter()
        read_windowed(list(scan.paths().values()), config.image.spec)
        read = time.perf_counter() - start
        stages = [1] + ([2] if predicted_stages(config, None)[1] else [])
        for stage in stages:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                result = predict_dicom_dir(config, folder, Path(tmp) / f"out{stage}", stage=stage)
            total = result.report["seconds"]
            print(
                f"stage {stage}: {n} slices of {args.size}x{args.size}, "
                f"{len(result.report['folds'])} folds x {len(result.report['tta'])} views: "
                f"{1000 * total / n:.1f} s per 1,000 slices; of which the header scan "
                f"{scanned / total:.2f} and reading the pixels once {read / total:.2f}; the rest "
                "is loading the models, the forward passes, the figures and the files"
            )


if __name__ == "__main__":
    main()
