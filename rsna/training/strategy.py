"""Which ``tf.distribute`` strategy to run under: several machines, TPU, every GPU, or the default.

Several machines (or several processes on one) train together when ``TF_CONFIG`` is set,
the TensorFlow convention: every worker runs the same command with its own ``TF_CONFIG``
(:class:`Cluster`), and ``rsna train`` then trains stage 1 under
``tf.distribute.MultiWorkerMirroredStrategy`` (:mod:`rsna.training.distributed`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rsna.errors import RsnaError

__all__ = [
    "CHIEF_TYPES",
    "STRATEGIES",
    "Cluster",
    "StrategyError",
    "choose_strategy",
    "cluster_from_env",
    "parse_tf_config",
]

#: The names ``rsna train --strategy`` accepts.
STRATEGIES = ("auto", "default", "mirrored", "tpu", "multiworker")

#: Task types that may train, as ``TF_CONFIG`` names them; the chief writes the outputs.
CHIEF_TYPES = ("chief", "worker")


class StrategyError(RsnaError):
    """An unknown strategy name, or a ``TF_CONFIG`` that does not describe this worker."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in a ``TF_CONFIG`` cluster.

    Attributes:
        workers: training tasks in the cluster (the ``chief`` and ``worker`` entries).
        rank: this task's position, 0 .. workers - 1: the chief first (``chief:0``, or
            ``worker:0`` when no chief is listed), then the workers in order.
        task: this task as ``TF_CONFIG`` names it, e.g. ``"worker:1"``.
    """

    workers: int
    rank: int
    task: str

    @property
    def chief(self) -> bool:
        """Whether this task writes the outputs."""
        return self.rank == 0


#: A TF_CONFIG address: host:port, or [IPv6]:port.
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}")


def parse_tf_config(text: str) -> Cluster | None:
    """The cluster a ``TF_CONFIG`` value describes, or None when it lists one task or none.

    ``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
    "index": 0}}``; a ``"chief"`` list of one address may come first.

    Raises:
        StrategyError: not JSON, or a field missing or of the wrong kind (named).
    """
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StrategyError(f"TF_CONFIG is not JSON ({exc}). Received: {text[:200]!r}") from exc
    if not isinstance(spec, dict) or not spec:
        raise StrategyError(f"TF_CONFIG must be a JSON object. Received: {text[:200]!r}")
    cluster = spec.get("cluster", {})
    if not isinstance(cluster, dict):
        raise StrategyError(f"TF_CONFIG `cluster` must be an object. Received: cluster={cluster!r}")
    counts = {}
    for kind in CHIEF_TYPES:
        addresses = cluster.get(kind, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise StrategyError(
                f"TF_CONFIG `cluster.{kind}` must be a list of 'host:port' strings. "
                f"Received: {kind}={addresses!r}"
            )
        for address in addresses:
            if not _ADDRESS.fullmatch(address) or not 0 < int(address.rpartition(":")[2]) < 65536:
                raise StrategyError(
                    f"TF_CONFIG `cluster.{kind}` addresses must be 'host:port' with a port in "
                    f"1-65535. Received: {address!r}"
                )
        counts[kind] = len(addresses)
    if counts["chief"] > 1:
        raise StrategyError(f"TF_CONFIG lists {counts['chief']} chiefs; at most one may be given")
    workers = counts["chief"] + counts["worker"]
    if workers <= 1 and not spec.get("task"):
        return None
    task = spec.get("task")
    if not isinstance(task, dict):
        raise StrategyError(f"TF_CONFIG `task` must be an object. Received: task={task!r}")
    kind, index = task.get("type"), task.get("index")
    if kind not in CHIEF_TYPES:
        raise StrategyError(
            f"TF_CONFIG `task.type` must be one of {CHIEF_TYPES}. Received: type={kind!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < counts[kind]:
        raise StrategyError(
            f"TF_CONFIG `task.index` must be an integer in [0, {counts[kind]}) for the "
            f"{counts[kind]} {kind} address(es). Received: index={index!r}"
        )
    if workers <= 1:
        return None  # one task, named correctly: nothing to distribute
    rank = index if kind == "chief" else index + counts["chief"]
    return Cluster(workers, rank, f"{kind}:{index}")


def cluster_from_env() -> Cluster | None:
    """The cluster of the ``TF_CONFIG`` environment variable (None when unset or one task)."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return parse_tf_config(text) if text else None


def choose_strategy(
    name: str = "auto", *, multi_worker: bool = False, timeout: float | None = None
):
    """A tf.distribute strategy.

    ``"auto"`` picks, in order: ``MultiWorkerMirroredStrategy`` when `multi_worker` and
    ``TF_CONFIG`` lists several workers; a TPU if present; ``MirroredStrategy`` for 2+
    GPUs; else the default strategy.

    Args:
        name: ``"auto"``, ``"default"``, ``"mirrored"`` (all GPUs, or all CPUs when there
            are no GPUs), ``"tpu"`` or ``"multiworker"`` (needs ``TF_CONFIG``).
        multi_worker: whether this command trains across ``TF_CONFIG``'s workers (only
            stage-1 training does; prediction runs on one machine).
        timeout: seconds a collective may wait for the other workers before failing
            (None: no limit; a dead worker is found by its missing heartbeats anyway).

    Raises:
        StrategyError: an unknown name, ``"multiworker"`` without a cluster, or a bad
            ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    cluster = cluster_from_env() if multi_worker or name == "multiworker" else None
    if name == "multiworker" or (name == "auto" and cluster is not None):
        if cluster is None or not multi_worker:
            raise StrategyError(
                "`strategy='multiworker'` needs TF_CONFIG listing 2 or more workers, and "
                "only `rsna train` (stage 1) trains across them"
            )
        from rsna.training.distributed import multi_worker_strategy

        return multi_worker_strategy(timeout=timeout)
    import tensorflow as tf

    if name == "tpu" and not _tpu_present():
        raise StrategyError(
            "`strategy='tpu'` but this machine shows no TPU (no /dev/accel0, TPU_NAME or "
            "COLAB_TPU_ADDR); use --strategy auto, or run on a TPU VM"
        )
    if name == "tpu" or (name == "auto" and _tpu_present()):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="local" if _tpu_present() else None
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def _tpu_present() -> bool:
    return (
        bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))
        or Path("/dev/accel0").exists()
    )
