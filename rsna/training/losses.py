"""The competition metric in Keras: a weighted binary cross-entropy loss and an epoch metric.

Both use the label weights and the clip of :mod:`rsna.metrics`, so the loss that is
minimised, the metric Keras reports and the NumPy metric of the CV score are one formula.
"""

from __future__ import annotations

import keras
import numpy as np

from rsna.data.labels import LABELS
from rsna.metrics import EPS, WEIGHTS

__all__ = ["LabelLogLoss", "WeightedBCE", "WeightedLogLoss", "weighted_bce"]


@keras.saving.register_keras_serializable(package="rsna")
def weighted_bce(y_true, y_pred):
    """Weighted binary cross-entropy per sample: the competition metric as a loss.

    Uses :data:`WEIGHTS`; see :class:`WeightedBCE` for other weights.
    """
    return _weighted_bce(y_true, y_pred, WEIGHTS)


def _bce(y_true, y_pred) -> keras.KerasTensor:
    """Binary cross-entropy per label, with the metric's clip."""
    ops = keras.ops
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0 - EPS)
    return -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))


def _weighted_bce(y_true, y_pred, weights) -> keras.KerasTensor:
    ops = keras.ops
    losses = _bce(y_true, y_pred)
    w = ops.convert_to_tensor(np.asarray(weights, np.float32))
    return ops.sum(losses * w, axis=-1) / ops.sum(w)


@keras.saving.register_keras_serializable(package="rsna")
class WeightedBCE(keras.losses.Loss):
    """Weighted binary cross-entropy with configurable label weights (default the metric's)."""

    def __init__(self, weights=None, name: str = "weighted_bce", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.weights = [float(w) for w in (WEIGHTS if weights is None else weights)]
        if len(self.weights) != len(LABELS):
            raise ValueError(f"`weights` must have {len(LABELS)} values. Received: {self.weights}")

    def call(self, y_true, y_pred):
        return _weighted_bce(y_true, y_pred, self.weights)

    def get_config(self) -> dict:
        return {**super().get_config(), "weights": self.weights}


@keras.saving.register_keras_serializable(package="rsna")
class WeightedLogLoss(keras.metrics.Metric):
    """The competition metric over a whole epoch (not an average of batch averages)."""

    def __init__(self, name: str = "weighted_log_loss", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch; `sample_weight` (e.g. a sequence mask) weighs each row's loss."""
        self._add(_weighted_bce(y_true, y_pred, WEIGHTS), sample_weight)

    def _add(self, losses, sample_weight) -> None:
        weight = (
            keras.ops.ones_like(losses)
            if sample_weight is None
            else keras.ops.cast(sample_weight, "float32")
        )
        weight = keras.ops.broadcast_to(
            keras.ops.reshape(weight, keras.ops.shape(losses)), keras.ops.shape(losses)
        )
        self.total.assign_add(keras.ops.sum(losses * weight))
        self.count.assign_add(keras.ops.sum(weight))

    def result(self):
        return keras.ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="rsna")
class LabelLogLoss(WeightedLogLoss):
    """One label's log loss over a whole epoch, as ``log_loss_<label>`` (the per-label
    curves of history.csv and TensorBoard)."""

    def __init__(self, label: str, name: str | None = None, **kwargs) -> None:
        if label not in LABELS:
            raise ValueError(f"`label` must be one of {list(LABELS)}. Received: label={label!r}")
        super().__init__(name=name or f"log_loss_{label}", **kwargs)
        self.label = label
        self.column = LABELS.index(label)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch of this label's column; `sample_weight` weighs each row."""
        self._add(_bce(y_true, y_pred)[..., self.column], sample_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "label": self.label}
