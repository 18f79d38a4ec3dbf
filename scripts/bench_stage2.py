"""Stage 2's cost a slice: the series model of a config, timed on random series here.

``rsna plan`` counts the series model's hours as slices x epochs x bags x the seconds a
slice this prints (``rsna.plan.STAGE2_SECONDS``). Series are 36 slices long (the real
competition's are 24-60) with the config's input width; the model, the batch and the
optimizer are the config's; only the numbers are random. One epoch warms up, the next
two are timed.

    python scripts/bench_stage2.py [CONFIG] [--series 400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from rsna.config import load_config
from rsna.data.labels import LABELS
from rsna.data.series import GEOMETRY
from rsna.training.quiet import load_tensorflow_quietly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="baseline")
    parser.add_argument("--series", type=int, default=400)
    parser.add_argument("--slices", type=int, default=36, help="slices a series")
    args = parser.parse_args()
    load_tensorflow_quietly()
    from rsna.training.fold import compile_fold_model
    from rsna.training.generator import SeriesGenerator
    from rsna.training.models import build_sequence_model

    config = load_config(args.config)
    width = 3 * len(LABELS) + (len(GEOMETRY) if config.sequence.position else 0)
    rng = np.random.default_rng(0)
    series, rows = {}, []
    for s in range(args.series):
        ids = [f"ID_{s:05x}{i:04x}"[:12] for i in range(args.slices)]
        series[f"S{s}"] = (ids, rng.normal(size=(args.slices, width)).astype(np.float32))
        rows += ids
    labels = pd.DataFrame(rng.integers(0, 2, (len(rows), len(LABELS))), index=rows, columns=list(LABELS))
    seq = config.sequence
    gen = SeriesGenerator(series, labels, batch_size=seq.batch_size, shuffle=True, position=seq.position)
    model = compile_fold_model(build_sequence_model(config, width), learning_rate=seq.learning_rate, label_weights=config.train.label_weights)
    model.fit(gen, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(gen, epochs=2, verbose=0, shuffle=False)
    seconds = (time.perf_counter() - start) / 2
    per_slice = seconds / (args.series * args.slices)
    print(f"{args.config}: units {seq.units}, bags {seq.bags}, batch {seq.batch_size} series, width {width}")
    print(f"one epoch of {args.series} series x {args.slices} slices: {seconds:.2f} s, {per_slice:.2e} s a slice")


if __name__ == "__main__":
    main()
