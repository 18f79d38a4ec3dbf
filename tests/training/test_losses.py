"""rsna.training.losses: the Keras loss and metric equal the NumPy competition metric."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from rsna.metrics import weighted_log_loss
from rsna.training.losses import WeightedBCE, WeightedLogLoss, weighted_bce


def random_case(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < 0.15).astype(float)
    p = np.clip(rng.beta(0.5, 2.0, (n, 6)), 0, 1)
    return y, p


def test_keras_loss_and_metric_equal_the_numpy_metric():
    y, p = random_case(64)
    p = np.clip(p, 1e-4, 1 - 1e-4).astype(np.float32)
    expected = weighted_log_loss(y, p)
    assert float(keras.ops.mean(weighted_bce(y, p))) == pytest.approx(expected, rel=1e-5)
    assert float(WeightedBCE()(y, p)) == pytest.approx(expected, rel=1e-5)
    metric = WeightedLogLoss()
    metric.update_state(y[:40], p[:40])  # two batches of different sizes: an epoch-wide mean
    metric.update_state(y[40:], p[40:])
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    uniform = WeightedBCE([1, 1, 1, 1, 1, 1])
    assert float(uniform(y, p)) == pytest.approx(
        float(np.mean(np.clip(-(y * np.log(p) + (1 - y) * np.log(1 - p)), 0, None))), rel=1e-5
    )
    restored = WeightedBCE.from_config(WeightedBCE([1, 2, 3, 4, 5, 6]).get_config())
    assert restored.weights == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="`weights` must have 6 values"):
        WeightedBCE([1, 2])
