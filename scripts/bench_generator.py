"""Benchmark the DataGenerator: images/s from DICOMs and from the cache, and fit throughput.

Writes a synthetic competition of 512x512 slices, prepares it, builds a 256x256x3 cache,
then prints, in one run on this machine:

* images/s of the generator as Keras's fit consumes it (the PyDataset adapter), for DICOM
  and cache input, with no workers (in the training loop), 2 threads and 2 processes;
* the ratio of ``model.fit`` throughput on a tiny CNN fed by the generator (from the
  cache) to the same model fed from in-memory tensors. The model and the loader share the
  same cores here; on a GPU machine the ratio should be 1.

Usage::

    python scripts/bench_generator.py [--images 1536] [--batch-size 64] [--passes 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RSNA_PROGRESS", "0")

import keras  # noqa: E402
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter  # noqa: E402

from rsna.data.cache import CacheSpec, build_cache, cache_dir  # noqa: E402
from rsna.data.metadata import prepare  # noqa: E402
from rsna.data.synthetic import SynthConfig, make_competition  # noqa: E402
from rsna.errors import DataWarning  # noqa: E402
from rsna.training.generator import DataGenerator, as_tf_dataset  # noqa: E402

SETTINGS = {
    "in the loop": {"workers": 1, "use_multiprocessing": False},
    "2 threads": {"workers": 2, "use_multiprocessing": False},
    "2 processes": {"workers": 2, "use_multiprocessing": True},
}


def loader_rate(gen: DataGenerator, passes: int) -> float:
    """Images/s of the best of `passes` epochs, through the adapter fit uses."""
    adapter = PyDatasetAdapter(gen, shuffle=False)
    best = 0.0
    for _ in range(passes):
        adapter.on_epoch_begin()
        start, n = time.perf_counter(), 0
        for x, _ in adapter.get_numpy_iterator():
            n += len(x)
        best = max(best, n / (time.perf_counter() - start))
        adapter.on_epoch_end()
    return best


def tiny_cnn(size: int) -> keras.Model:
    inputs = keras.Input((size, size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(6, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times = [*getattr(self, "times", []), time.perf_counter() - self.start]


def fit_epoch_times(model: keras.Model, data, epochs: int, **kwargs) -> list[float]:
    """Seconds per epoch, without the first (which traces the graph)."""
    timer = EpochTimer()
    model.fit(data, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer], **kwargs)
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1536, help="about this many training slices")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--passes", type=int, default=4, help="epochs timed per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of fit timings")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DataWarning)
    keras.utils.set_random_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        slices = 16
        config = SynthConfig(
            patients=max(2, round(args.images / slices / 1.5)),
            slices=slices,
            size=512,
            seed=3,
            test_fraction=0.0,
        )
        make_competition(f"{tmp}/data", config)
        prepared = prepare(f"{tmp}/data", f"{tmp}/work")
        spec = CacheSpec(size=256)
        build_cache(f"{tmp}/work", spec)
        labels = prepared.labels
        ids = prepared.metadata.index[
            prepared.metadata["readable"] & (prepared.metadata["split"] == "train")
        ].tolist()
        sources = {
            "dicom": {"work_dir": f"{tmp}/work"},
            "cache": {"cache": cache_dir(f"{tmp}/work", spec)},
        }

        def generator(source: str, setting: str, **extra) -> DataGenerator:
            return DataGenerator(
                ids,
                labels,
                size=256,
                batch_size=args.batch_size,
                shuffle=True,
                **sources[source],
                **SETTINGS[setting],
                **extra,
            )

        print(
            f"{len(ids)} slices of 512x512 -> 256x256x3 uint8, batch {args.batch_size}, {os.cpu_count()} cores"
        )
        print(f"generator throughput (best of {args.passes} epochs through the fit adapter):")
        rates = {}
        for source in sources:
            for setting in SETTINGS:
                rates[source, setting] = loader_rate(generator(source, setting), args.passes)
                print(f"  {source:5s} {setting:12s} {rates[source, setting]:9.0f} img/s")
        best = max(SETTINGS, key=lambda s: rates["cache", s])
        print(f"  best from cache: {rates['cache', best]:.0f} img/s ({best})")

        cache = generator("cache", "in the loop")
        x = np.concatenate([cache[i][0] for i in range(len(cache))])
        y = np.concatenate([cache[i][1] for i in range(len(cache))])
        epochs = args.passes + 1
        feeds = {
            "in-memory tensors": lambda: (x, {"y": y, "batch_size": args.batch_size}),
            "DataGenerator (cache, in the loop)": lambda: (generator("cache", "in the loop"), {}),
            "DataGenerator (cache, 2 threads)": lambda: (generator("cache", "2 threads"), {}),
            "as_tf_dataset (cache)": lambda: _tf_feed(generator("cache", "in the loop"), epochs),
        }
        times: dict[str, list[float]] = {name: [] for name in feeds}
        for _ in range(args.rounds):  # alternate, so drift in machine speed hits every feed alike
            for name, feed in feeds.items():
                data, kwargs = feed()
                times[name] += fit_epoch_times(tiny_cnn(256), data, epochs, **kwargs)
        rates = {name: len(x) / float(np.median(t)) for name, t in times.items()}
        memory = rates["in-memory tensors"]
        print(
            f"fit throughput, tiny CNN (median of {args.rounds} x {epochs - 1} epochs, feeds alternated):"
        )
        for name, rate in rates.items():
            print(f"  {name:36s} {rate:7.0f} img/s   ratio {rate / memory:.2f}")


def _tf_feed(gen: DataGenerator, epochs: int):
    return as_tf_dataset(gen, epochs=epochs), {"steps_per_epoch": len(gen)}


if __name__ == "__main__":
    main()
