"""The competition metric: weighted multi-label log loss, `any` counted twice. NumPy only.

    L = sum_i sum_c w_c * l_ic / (N * sum_c w_c),   w = 1 for each subtype, 2 for `any`

where l_ic is the binary log loss of image i, label c. Predictions are clipped to
``[EPS, 1 - EPS]`` with ``EPS = 1e-7`` (references clip at 1e-7 to 1e-4; the smaller
value changes nothing for calibrated models and keeps the metric close to unclipped).
Over the flattened (image, label) rows with these weights it equals
``sklearn.metrics.log_loss`` exactly; a test checks it to 1e-9.

The weights and the logit are defined here once. The Keras loss and metric of
:mod:`rsna.training.losses` share them; nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rsna.data.labels import LABELS, prior

__all__ = [
    "EPS",
    "PRIOR_EPS",
    "WEIGHTS",
    "log_losses",
    "logit",
    "per_label_log_loss",
    "prior_predictions",
    "sigmoid",
    "weighted_log_loss",
]

#: Label weights of the competition metric, in LABELS order.
WEIGHTS: np.ndarray = np.array([2.0 if label == "any" else 1.0 for label in LABELS])
#: The metric's clip of predictions.
EPS = 1e-7
#: The clip of a prior before it becomes a logit (a starting bias, or the stand-in for an
#: unreadable slice): a label without positives starts at logit(1e-4) = -9.2, not -16.
PRIOR_EPS = 1e-4


def logit(p: np.ndarray, *, eps: float = EPS) -> np.ndarray:
    """log(p / (1 - p)) in float64, after clipping p to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(p, np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`logit`, in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


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
    means = prior(labels).to_numpy()
    return pd.DataFrame(np.tile(means, (len(index), 1)), index=index, columns=list(LABELS))
