"""The competition metric: weighted multi-label log loss, `any` counted twice.

    L = sum_i sum_c w_c * l_ic / (N * sum_c w_c),   w = 1 for each subtype, 2 for `any`

where l_ic is the binary log loss of image i, label c. Predictions are clipped to
``[EPS, 1 - EPS]`` with ``EPS = 1e-7`` (references clip at 1e-7 to 1e-4; the smaller
value changes nothing for calibrated models and keeps the metric close to unclipped).
Over the flattened (image, label) rows with these weights it equals
``sklearn.metrics.log_loss`` exactly; a test checks it to 1e-9.

The weights are defined here once and shared by the NumPy metric, the Keras metric and
the weighted binary cross-entropy loss.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from rsna.labels import LABELS

#: Label weights of the competition metric, in LABELS order.
WEIGHTS: np.ndarray = np.array([2.0 if label == "any" else 1.0 for label in LABELS])
EPS = 1e-7


def _as_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6) float64 arrays; DataFrames are aligned by image ID and taken by column name."""
    if isinstance(y_true, pd.DataFrame) or isinstance(y_pred, pd.DataFrame):
        if not (isinstance(y_true, pd.DataFrame) and isinstance(y_pred, pd.DataFrame)):
            raise ValueError("`y_true` and `y_pred` must both be DataFrames, or both arrays")
        missing = y_true.index.difference(y_pred.index)
        if len(missing):
            raise ValueError(f"{len(missing)} images have no prediction, e.g. {missing[0]}")
        y_pred = y_pred.loc[y_true.index]
        y_true, y_pred = y_true[list(LABELS)], y_pred[list(LABELS)]
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(LABELS):
        raise ValueError(
            f"`y_true` and `y_pred` must both be (n, {len(LABELS)}). Received: {t.shape} and {p.shape}"
        )
    if not np.isfinite(p).all():
        raise ValueError("`y_pred` contains NaN or infinite values")
    return t, p


def log_losses(y_true, y_pred, *, eps: float = EPS) -> np.ndarray:
    """Binary log loss per image and label, (n, 6)."""
    t, p = _as_arrays(y_true, y_pred)
    p = np.clip(p, eps, 1.0 - eps)
    return -(t * np.log(p) + (1.0 - t) * np.log1p(-p))


def weighted_log_loss(y_true, y_pred, *, eps: float = EPS) -> float:
    """The competition metric for arrays in LABELS order, or DataFrames by column name."""
    losses = log_losses(y_true, y_pred, eps=eps)
    return float((losses * WEIGHTS).sum() / (len(losses) * WEIGHTS.sum()))


def per_label_log_loss(y_true, y_pred, *, eps: float = EPS) -> dict[str, float]:
    """Mean log loss of each label (unweighted), plus the weighted total as ``"weighted"``."""
    losses = log_losses(y_true, y_pred, eps=eps)
    out = {label: float(v) for label, v in zip(LABELS, losses.mean(axis=0), strict=True)}
    out["weighted"] = float((losses * WEIGHTS).sum() / (len(losses) * WEIGHTS.sum()))
    return out


def prior_predictions(labels: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """The constant per-label mean of `labels`, for every image in `index`: the baseline."""
    means = labels[list(LABELS)].mean().to_numpy()
    return pd.DataFrame(np.tile(means, (len(index), 1)), index=index, columns=list(LABELS))


# ------------------------------------------------------------------------------ Keras


@keras.saving.register_keras_serializable(package="rsna")
def weighted_bce(y_true, y_pred):
    """Weighted binary cross-entropy per sample: the competition metric as a loss.

    Uses :data:`WEIGHTS`; see :class:`WeightedBCE` for other weights.
    """
    return _weighted_bce(y_true, y_pred, WEIGHTS)


def _weighted_bce(y_true, y_pred, weights) -> keras.KerasTensor:
    ops = keras.ops
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0 - EPS)
    losses = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
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
        losses = _weighted_bce(y_true, y_pred, WEIGHTS)
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
