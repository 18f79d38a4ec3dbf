"""Which ``tf.distribute`` strategy to train under: TPU, every GPU, or the default."""

from __future__ import annotations

import os
from pathlib import Path

from rsna.errors import RsnaError

__all__ = ["STRATEGIES", "StrategyError", "choose_strategy"]

#: The names ``rsna train --strategy`` accepts.
STRATEGIES = ("auto", "default", "mirrored", "tpu")


class StrategyError(RsnaError):
    """An unknown strategy name."""


def choose_strategy(name: str = "auto"):
    """A tf.distribute strategy: TPU if present, MirroredStrategy for 2+ GPUs, else default.

    Args:
        name: ``"auto"``, ``"default"``, ``"mirrored"`` (all GPUs, or all CPUs when there
            are no GPUs), or ``"tpu"``.
    """
    import tensorflow as tf

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
    if name not in ("auto", "default"):
        raise StrategyError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    return tf.distribute.get_strategy()


def _tpu_present() -> bool:
    return (
        bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))
        or Path("/dev/accel0").exists()
    )
