"""What tf.distribute costs per step on this machine: one `fit` step of a small CNN under
the default strategy, MirroredStrategy on one CPU device, and MirroredStrategy over two
logical CPU devices (two replicas sharing the cores), as ratios measured in one run.

    python scripts/bench_distributed.py --steps 40 --size 128 --batch 32

Each strategy runs in a fresh process (TensorFlow fixes its devices at start), on the
same random uint8 batches, `--repeats` times interleaved (this shared VM's speed drifts
by 2x from minute to minute); the medians are compared. `multiworker_2` is two worker
processes on 127.0.0.1 under MultiWorkerMirroredStrategy (rsna's CollectiveStrategy, as
`rsna train` runs with TF_CONFIG), each computing half of every global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys

NAMES = ("default", "mirrored_1cpu", "mirrored_2cpu", "multiworker_2")

_RUN = """
import json, sys, time
import tensorflow as tf
name, steps, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
jit = {"auto": "auto", "off": False}[sys.argv[5]]
cpu = tf.config.list_physical_devices("CPU")[0]
if name == "mirrored_2cpu":
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from rsna.config import config_from_dict
from rsna.training.fold import compile_fold_model
from rsna.training.models import build_model
from rsna.training.distributed import multi_worker_strategy
strategy = {
    "multiworker_2": lambda: multi_worker_strategy(),
    "default": lambda: tf.distribute.get_strategy(),
    "mirrored_1cpu": lambda: tf.distribute.MirroredStrategy(["/cpu:0"]),
    "mirrored_2cpu": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
}[name]()
config = config_from_dict({"image": {"size": size, "context": 0}, "model": {"backbone": "small_cnn", "weights": "random"}})
with strategy.scope():
    model = compile_fold_model(build_model(config), learning_rate=1e-3, label_weights=(1, 1, 1, 1, 1, 2), jit_compile=jit)
rng = np.random.default_rng(0)
x = rng.integers(0, 255, (batch * 4, size, size, 3), dtype=np.uint8)
y = (rng.random((batch * 4, 6)) < 0.2).astype("float32")
data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch)
if name == "multiworker_2":  # each worker feeds its replica half of every global batch
    share = batch // strategy.num_replicas_in_sync
    data = strategy.distribute_datasets_from_function(
        lambda _: tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(share)
    )
model.fit(data, steps_per_epoch=5, epochs=1, verbose=0)  # build and trace
start = time.perf_counter()
model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
print(json.dumps({"name": name, "seconds_per_step": (time.perf_counter() - start) / steps, "xla": bool(model.jit_compile)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the VM hits every strategy
        for name in NAMES:
            argv = [name, str(args.steps), str(args.size), str(args.batch), "auto"]
            runs[name].append(_time_step(argv))
    seconds = {name: statistics.median(values) for name, values in runs.items()}
    base = seconds["default"]
    for name, value in seconds.items():
        spread = ", ".join(f"{v * 1000:.0f}" for v in runs[name])
        print(f"{name:15s} {value * 1000:8.1f} ms/step (median of {spread})  {value / base:5.2f}x default")  # fmt: skip
    overhead = (seconds["mirrored_1cpu"] - base) * 1000
    print(f"strategy overhead per step (MirroredStrategy, one device): {overhead:+.1f} ms")
    print(f"two replicas on this machine's cores: {base / seconds['mirrored_2cpu']:.2f}x the default's throughput")  # fmt: skip
    print(f"two worker processes against one: {base / seconds['multiworker_2']:.2f}x the throughput")  # fmt: skip


def _time_step(argv: list[str]) -> float:
    """Seconds per step of one run: one process, or the chief of two workers."""
    if argv[0] != "multiworker_2":
        done = subprocess.run(
            [sys.executable, "-c", _RUN, *argv], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"]
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN, *argv],
            env={
                **os.environ,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": k}}
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for k in range(2)
    ]
    outs = [proc.communicate(timeout=1800)[0] for proc in procs]
    return json.loads(outs[0].strip().splitlines()[-1])["seconds_per_step"]


if __name__ == "__main__":
    main()
