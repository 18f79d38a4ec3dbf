"""Which Keras dtype policy a slice model trains in: ``model.precision``.

``"auto"`` decides by the devices (:func:`precision_for`):

* a TPU: ``mixed_bfloat16`` (the TPU's native type; float16 would need loss scaling
  for nothing);
* GPUs of compute capability 8.0 or more (A100, L4, RTX 30xx/40xx): ``mixed_bfloat16``,
  with float32's range, so no loss scaling;
* capability 7.x (V100, T4, RTX 20xx): ``mixed_float16`` on their float16 tensor cores,
  with dynamic loss scaling (:func:`rsna.training.fold.compile_fold_model`);
* older GPUs (P100, K80: no tensor cores, so half precision saves memory but no time)
  and CPUs: ``float32``.

With several GPUs the weakest decides. The head (logits, probabilities) stays float32
in every mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rsna.config import Config

__all__ = ["Device", "local_devices", "precision_for", "resolve_precision"]


@dataclass(frozen=True)
class Device:
    """One accelerator or CPU: its kind and, for a GPU, its CUDA compute capability."""

    kind: Literal["CPU", "GPU", "TPU"]
    capability: tuple[int, int] | None = None


def precision_for(devices: Sequence[Device]) -> tuple[str, str]:
    """The dtype policy for `devices` and why, e.g. ``("mixed_float16", "GPU 7.5")``."""
    if any(d.kind == "TPU" for d in devices):
        return "mixed_bfloat16", "TPU"
    gpus = [d for d in devices if d.kind == "GPU"]
    if not gpus:
        return "float32", "no GPU or TPU"
    weakest = min(d.capability or (0, 0) for d in gpus)
    reason = f"GPU compute capability {weakest[0]}.{weakest[1]}"
    if weakest >= (8, 0):
        return "mixed_bfloat16", reason
    if weakest >= (7, 0):
        return "mixed_float16", reason
    return "float32", reason


def local_devices() -> list[Device]:
    """This machine's TPUs, GPUs (with compute capability) and CPU, as TensorFlow sees them."""
    import tensorflow as tf

    found = [Device("TPU") for _ in tf.config.list_logical_devices("TPU")]
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        found.append(Device("GPU", tuple(capability) if capability else None))
    return found or [Device("CPU")]


def resolve_precision(
    config: Config, *, devices: Sequence[Device] | None = None
) -> tuple[Config, str]:
    """`config` with ``model.precision`` made concrete, and a line saying what and why."""
    if config.model.precision != "auto":
        return config, f"precision: {config.model.precision} (model.precision)"
    precision, reason = precision_for(local_devices() if devices is None else devices)
    model = dataclasses.replace(config.model, precision=precision)
    return dataclasses.replace(config, model=model), f"precision: {precision} (auto: {reason})"
