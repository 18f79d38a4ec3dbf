"""Feeding, side by side: rsna's loaders against the top solutions' data paths, one run.

Builds one synthetic competition (512x512 DICOMs), preprocesses it into a lossless and
a lossy store at 256x256 with three windows, and writes the same pixels as one PNG and
one JPEG a slice, as the 1st and 2nd places stored them. Then, in one run, interleaved
round by round, each loader drains one shuffled epoch of the training images in batches
of 64, in a subprocess pinned to 1 core and to all cores, at context 0 and 1:

* rsna's ``DataGenerator`` over the lossless and the lossy store (``fit``'s adapter,
  one worker thread a core), and rsna's tf.data stream over the lossless store;
* the peers, written here: tf.data over JPEG files and over PNG files
  (``from_tensor_slices(paths).map(read_file + decode ... + concat, AUTOTUNE)``), and a
  ``keras.utils.PyDataset`` over PNG files read with ``cv2.imread`` (one worker a core).

A sample at context 1 is its slice and both neighbours (9 channels); every loader finds
the neighbours by the same index and decodes three slices a sample. It also measures the
decode ceiling (slices/s of each format in one thread on one core) and each loader's
peak memory above the process's start. Prints a table of medians over the rounds, each
loader's share of its ceiling, and the ratio of rsna's default loader (the
DataGenerator over the lossy store, ``baseline``'s) to the best peer.

Usage::

    python scripts/bench_feed.py [--slices 4000] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("RSNA_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE, BATCH = 256, 64
DEFAULT = "rsna DataGenerator, lossy"  # baseline.toml's store, read by `rsna train`
LOADERS = (
    "rsna DataGenerator, lossless",
    "rsna DataGenerator, lossy",
    "rsna stream, lossless",
    "peer tf.data, JPEG",
    "peer tf.data, PNG",
    "peer PyDataset, PNG",
)
FORMAT = {  # which decode ceiling a loader is measured against
    "rsna DataGenerator, lossless": "lossless",
    "rsna DataGenerator, lossy": "lossy",
    "rsna stream, lossless": "lossless",
    "peer tf.data, JPEG": "jpeg",
    "peer tf.data, PNG": "png",
    "peer PyDataset, PNG": "png",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4000, help="about this many slices")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the data here")
    parser.add_argument("--contexts", default="0,1")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--core-counts", default="", help="e.g. 1,2 (default: 1 and all)")
    parser.add_argument("--loaders", default=";".join(LOADERS), help="names, separated by ;")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # a child's job
    parser.add_argument("--cores", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root, cores=args.cores, context=args.context, batch=args.batch_size)))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="rsna-bench-feed-"))
    try:
        run(root, args)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------- the parent


def build(root: Path, slices: int) -> None:
    """The competition, its two stores and the peers' PNG and JPEG files (same pixels)."""
    import cv2

    from rsna.data.cache import ImageCache, build_cache
    from rsna.data.codecs import codec_for
    from rsna.data.metadata import prepare
    from rsna.data.sources import ImageSpec
    from rsna.data.synthetic import SynthConfig, make_competition

    data, work = root / "data", root / "work"
    if (root / "built").exists():
        return
    patients = max(2, int(slices / (34 * 1.5)) + 1)
    make_competition(data, SynthConfig(patients=patients, studies=2, size=512, seed=3, test_fraction=0.1))  # fmt: skip
    prepare(data, work)
    for compression in ("lossless", "lossy"):
        build_cache(work, ImageSpec(size=SIZE), codec=codec_for(compression), out=root / compression)
    store = ImageCache(root / "lossless")
    for folder in ("png", "jpeg"):
        (root / folder).mkdir(exist_ok=True)
    image = np.empty(store.spec.shape, np.uint8)
    for image_id in store.index.index[store.index["ok"].to_numpy()]:
        store.read_into(image_id, image)
        cv2.imwrite(str(root / "png" / f"{image_id}.png"), image)
        cv2.imwrite(str(root / "jpeg" / f"{image_id}.jpg"), image)  # OpenCV's quality 95
    (root / "built").write_text("")


def run(root: Path, args: argparse.Namespace) -> None:
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    build(root, args.slices)
    print(f"built in {time.perf_counter() - start:.0f} s: {root}")
    cores = len(os.sched_getaffinity(0))
    core_counts = [int(n) for n in args.core_counts.split(",")] if args.core_counts else sorted({1, cores})
    loaders = args.loaders.split(";")
    contexts = [int(c) for c in args.contexts.split(",")]

    def child(name: str, n: int, context: int = 0) -> dict:
        command = [sys.executable, __file__, "--measure", name, "--cores", str(n), "--context", str(context), "--root", str(root), "--batch-size", str(args.batch_size)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{name} (context {context}, {n} cores) failed:\n{done.stderr[-3000:]}")  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    ceiling = {f: child(f"ceiling {f}", 1)["rate"] for f in sorted(set(FORMAT.values()))}
    print("decode ceiling, one thread on one core (slices/s): " + ", ".join(f"{f} {r:,.0f}" for f, r in ceiling.items()))  # fmt: skip
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.rounds):
        for context in contexts:
            for n in core_counts:
                for name in loaders:
                    runs.setdefault((name, context, n), []).append(child(name, n, context))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    report(runs, ceiling, contexts=contexts, core_counts=core_counts)


def report(runs: dict, ceiling: dict, *, contexts: list[int], core_counts: list[int]) -> None:
    """The table: medians over rounds, the range, memory, share of ceiling, ratio to peers."""
    print()
    print("| loader | context | cores | img/s (median, range) | peak memory | of ceiling | / best peer |")
    print("|---|---|---|---|---|---|---|")
    ratios = {}
    for context in contexts:
        for n in core_counts:
            rates = {name: statistics.median(r["rate"] for r in rs) for (name, c, k), rs in runs.items() if c == context and k == n}  # fmt: skip
            peers = {name: rate for name, rate in rates.items() if name.startswith("peer")}
            best = max(peers.values()) if peers else float("nan")
            for name, rate in rates.items():
                rs = runs[(name, context, n)]
                low, high = min(r["rate"] for r in rs), max(r["rate"] for r in rs)
                memory = max(r["peak_mb"] for r in rs)
                share = rate / (ceiling[FORMAT[name]] * n / (2 * context + 1))
                print(f"| {name} | {context} | {n} | {rate:,.0f} ({low:,.0f}-{high:,.0f}) | {memory:,.0f} MB | {share:.0%} | {rate / best:.2f}x |")  # fmt: skip
            if DEFAULT in rates and peers:
                ratios[(context, n)] = (rates[DEFAULT] / best, max(peers, key=peers.get))
    print()
    print("'of ceiling': the rate against the format's one-core decode rate x cores / slices a sample")
    for (context, n), (ratio, peer) in ratios.items():
        print(f"{DEFAULT} / best peer ({peer}), context {context}, {n} core(s): {ratio:.2f}x")


# ------------------------------------------------------------------------- the children


def measure(name: str, root: Path, *, cores: int, context: int, batch: int = BATCH) -> dict:
    """One measurement in this process, pinned to `cores` cores before any thread starts."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    warnings.simplefilter("ignore")
    import cv2

    cv2.setNumThreads(1)  # loaders parallelise by worker; OpenCV's own pool would compete
    if name.startswith("ceiling"):
        return {"rate": _ceiling(root, name.split()[-1])}
    ids, labels, triples = _epoch(root, context)
    import keras  # noqa: F401  (every loader runs beside Keras: its memory is not the loader's)
    import tensorflow  # noqa: F401

    base = _rss_mb()
    if "DataGenerator" in name:
        rate = _generator(root / name.rsplit(" ", 1)[-1], ids, labels, cores=cores, context=context, batch=batch)  # fmt: skip
    elif "stream" in name:
        rate = _stream(root / "lossless", ids, labels, context=context, batch=batch)
    elif "tf.data" in name:
        rate = _tf_files(root, triples, labels.loc[ids], png="PNG" in name, batch=batch)
    else:
        rate = _py_dataset(root, triples, labels.loc[ids], cores=cores, batch=batch)
    return {"rate": rate, "peak_mb": _peak_mb() - base}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux


def _epoch(root: Path, context: int):
    """The training images in one shuffled order, their labels, and each sample's slices."""
    from rsna.data.cache import ImageCache
    from rsna.data.metadata import read_metadata, read_prepared_labels
    from rsna.data.series import neighbours

    work = root / "work"
    meta, labels = read_metadata(work), read_prepared_labels(work)
    ok = ImageCache(root / "lossless").index["ok"]
    ids = meta.index[(meta["split"] == "train") & ok.reindex(meta.index, fill_value=False)]
    ids = list(np.random.default_rng(0).permutation(ids.to_numpy()))
    triples = neighbours(meta, ids, context=context)
    readable = ok.reindex(triples.ravel(), fill_value=False).to_numpy().reshape(triples.shape)
    centre = np.asarray(ids, dtype=object)[:, None]
    return ids, labels, np.where(readable, triples, centre)  # as rsna: the centre stands in


def _ceiling(root: Path, fmt: str) -> float:
    """Slices/s of one format decoded one after another in this thread."""
    import cv2

    from rsna.data.cache import ImageCache

    files = {"png": "png", "jpeg": "jpg"}.get(fmt)  # the peers' files' suffix
    store = ImageCache(root / ("lossless" if files else fmt))
    ids = list(store.index.index[store.index["ok"].to_numpy()])
    out = np.empty(store.spec.shape, np.uint8)
    start = time.perf_counter()
    for image_id in ids:
        if files:
            cv2.imread(str(root / fmt / f"{image_id}.{files}"))
        else:
            store.read_into(image_id, out)
    return len(ids) / (time.perf_counter() - start)


def _drain(batches) -> float:
    """Images/s of an iterator of batches, timed from the end of the first batch.

    Raises:
        SystemExit: one batch or none: nothing to time (use a smaller batch).
    """
    start, n = None, 0
    for x in batches:
        if start is None:
            start = time.perf_counter()
            continue
        n += len(x[0] if isinstance(x, tuple) else x)
    if n == 0:
        raise SystemExit("the epoch has one batch: nothing to time after it (lower --batch-size)")
    return n / (time.perf_counter() - start)


def _adapter_batches(dataset):
    """The batches ``fit`` gets from a PyDataset: Keras's adapter, its workers."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(dataset, shuffle=False)
    adapter.on_epoch_begin()
    yield from adapter.get_numpy_iterator()
    adapter.on_epoch_end()


def _generator(store: Path, ids, labels, *, cores: int, context: int, batch: int) -> float:
    from rsna.training.generator import DataGenerator

    gen = DataGenerator(ids, labels, cache=store, size=SIZE, batch_size=batch, context=context, shuffle=True, workers=cores)  # fmt: skip
    return _drain(_adapter_batches(gen))


def _stream(store: Path, ids, labels, *, context: int, batch: int) -> float:
    from rsna.training.streaming import stream_dataset

    data = stream_dataset(store, ids, labels, batch_size=batch, context=context, shuffle=True)
    return _drain(data.as_numpy_iterator())


def _tf_files(root: Path, triples: np.ndarray, labels, *, png: bool, batch: int) -> float:
    """The idiomatic tf.data peer: a path per slice, decoded in an AUTOTUNE map."""
    import tensorflow as tf

    suffix, folder = (".png", "png") if png else (".jpg", "jpeg")
    paths = np.vectorize(lambda i: str(root / folder / f"{i}{suffix}"))(triples)
    decode = tf.io.decode_png if png else tf.io.decode_jpeg

    def load(row, y):
        return tf.concat([decode(tf.io.read_file(row[j]), channels=3) for j in range(paths.shape[1])], axis=-1), y  # fmt: skip

    data = tf.data.Dataset.from_tensor_slices((paths, labels.to_numpy(np.float32)))
    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)  # fmt: skip
    return _drain(data.as_numpy_iterator())


def _py_dataset(root: Path, triples: np.ndarray, labels, *, cores: int, batch: int) -> float:
    """The 1st place's reader in Keras: cv2.imread of each slice's PNG, stacked."""
    import cv2
    import keras

    targets = labels.to_numpy(np.float32)

    class PngSlices(keras.utils.PyDataset):
        def __len__(self) -> int:
            return -(-len(triples) // batch)

        def __getitem__(self, index: int):
            rows = range(index * batch, min((index + 1) * batch, len(triples)))
            x = np.stack([np.concatenate([cv2.imread(str(root / "png" / f"{i}.png")) for i in triples[r]], axis=-1) for r in rows])  # fmt: skip
            return x, targets[rows.start : rows.stop]

    return _drain(_adapter_batches(PngSlices(workers=cores)))


if __name__ == "__main__":
    main()
