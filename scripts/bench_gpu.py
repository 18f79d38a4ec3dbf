"""What ``fit`` really does on this machine's accelerator: images a second, three feeds.

Builds a small synthetic competition and its store (or reuses ``--keep``), builds the
config's slice model at ``--size`` with ``--backbone`` and ``--precision``, and times
``model.fit`` over the same images, in one run, from:

* the store through rsna's ``DataGenerator`` (what ``rsna train`` feeds),
* the store through rsna's tf.data stream (``stream_dataset``),
* in-memory tensors already decoded (the ceiling: the device alone).

The first epoch of each is a warm-up (tracing, XLA, cuDNN autotuning) and is not timed.
It prints images a second of each, its ratio to in-memory, and the device. On a CPU it
runs a tiny case (CI runs it so); on a GPU it gives the figures the configs' headers
should quote in place of ``rsna plan``'s projections (``rsna plan --rate R``).

    python scripts/bench_gpu.py --backbone EfficientNetB0 --size 256 --precision mixed_float16 --batch-size 64 --slices 2000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="EfficientNetB0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=2000, help="about this many slices")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--context", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the data here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from rsna.training.quiet import load_tensorflow_quietly, tensorflow_defaults

    tensorflow_defaults()
    load_tensorflow_quietly()
    root = args.keep or Path(tempfile.mkdtemp(prefix="rsna-bench-gpu-"))
    try:
        run(root, args)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def build(root: Path, *, slices: int, size: int) -> Path:
    """A synthetic competition prepared in ``root/work``, and its lossless store."""
    from rsna.data.cache import build_cache
    from rsna.data.codecs import codec_for
    from rsna.data.metadata import prepare
    from rsna.data.sources import ImageSpec
    from rsna.data.synthetic import SynthConfig, make_competition

    store = root / f"store{size}"
    if not (root / f"built{size}").exists():
        patients = max(2, int(slices / (34 * 1.5)) + 1)
        synth = SynthConfig(patients=patients, studies=2, size=512, seed=4, test_fraction=0.0)
        make_competition(root / "data", synth)
        prepare(root / "data", root / "work")
        build_cache(root / "work", ImageSpec(size=size), codec=codec_for("lossless"), out=store)
        (root / f"built{size}").write_text("")
    return store


def run(root: Path, args: argparse.Namespace) -> None:
    import keras
    import tensorflow as tf

    from rsna.config import config_from_dict
    from rsna.data.cache import ImageCache
    from rsna.data.metadata import read_prepared_labels
    from rsna.training.fold import compile_fold_model
    from rsna.training.generator import DataGenerator
    from rsna.training.models import build_model
    from rsna.training.precision import local_devices, resolve_precision
    from rsna.training.streaming import stream_dataset, stream_steps

    store_path = build(root, slices=args.slices, size=args.size)
    store = ImageCache(store_path)
    labels = read_prepared_labels(root / "work")
    ids = [i for i in labels.index if store.readable(i)]
    config = config_from_dict(
        {
            "image": {"size": args.size, "context": args.context},
            "model": {"backbone": args.backbone, "weights": "random", "precision": args.precision},
            "train": {"batch_size": args.batch_size},
        }
    )
    config, precision = resolve_precision(config)
    batch = args.batch_size
    generator = DataGenerator(
        ids,
        labels,
        cache=store,
        size=args.size,
        context=args.context,
        batch_size=batch,
        shuffle=True,
    )
    batches = [generator.load_batch(i, epoch=0) for i in range(len(generator))]
    x, y = (np.concatenate([b[k] for b in batches]) for k in (0, 1))
    steps = stream_steps(len(ids), batch)
    feeds = {
        "in-memory tensors": lambda: (
            tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2)
        ),
        "DataGenerator (rsna train)": lambda: generator,
        "tf.data stream": lambda: stream_dataset(
            store,
            ids,
            labels,
            batch_size=batch,
            context=args.context,
            shuffle=True,
            epochs=args.epochs + 1,
        ),
    }
    rates = {}
    for name, feed in feeds.items():
        keras.backend.clear_session()
        model = compile_fold_model(
            build_model(config),
            learning_rate=1e-4,
            label_weights=config.train.label_weights,
            precision=config.model.precision,
        )
        timer = epoch_timer()
        stream = name == "tf.data stream"
        model.fit(
            feed(),
            epochs=args.epochs + 1,
            steps_per_epoch=steps if stream else None,
            verbose=0,
            callbacks=[timer],
        )
        seconds = float(np.median(timer.seconds[1:]))  # the first epoch warms up
        rates[name] = len(ids) / seconds
        print(
            f"{name:28s} {rates[name]:8.1f} img/s ({seconds:.2f} s an epoch of {len(ids)})",
            flush=True,
        )
    device = ", ".join(
        d.kind + (f" {d.capability[0]}.{d.capability[1]}" if d.capability else "")
        for d in local_devices()
    )
    print(
        f"\n{args.backbone} at {args.size} px, {precision}, batch {batch}, context {args.context}, on {device}"
    )
    ceiling = rates["in-memory tensors"]
    for name in list(feeds)[1:]:
        print(f"{name} / in-memory: {rates[name] / ceiling:.2f}x")


def epoch_timer():
    """A Keras callback that records the seconds of each epoch in ``.seconds``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    return EpochTimer()


if __name__ == "__main__":
    main()
