"""rsna.training.losses: the Keras loss and metric equal the NumPy competition metric."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss

from rsna.data.labels import LABELS
from rsna.metrics import weighted_log_loss
from rsna.training.losses import LabelLogLoss, WeightedBCE, WeightedLogLoss, weighted_bce


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


def test_each_label_metric_is_sklearns_log_loss_of_its_column_over_the_masked_rows():
    y, p = random_case(60, seed=3)
    p = np.clip(p, 1e-4, 1 - 1e-4).astype(np.float32)
    # As stage 2 gives them: series of 10 slices, padding masked out by the sample weight.
    mask = (np.arange(10)[None, :] < np.array([10, 7, 3, 10, 9, 1])[:, None]).astype(np.float32)
    for column, label in enumerate(LABELS):
        metric = LabelLogLoss(label)
        assert metric.name == f"log_loss_{label}"
        metric.update_state(y[:30].reshape(3, 10, 6), p[:30].reshape(3, 10, 6), mask[:3])
        metric.update_state(y[30:].reshape(3, 10, 6), p[30:].reshape(3, 10, 6), mask[3:])
        kept = mask.reshape(-1) > 0
        expected = log_loss(y[kept, column], p[kept, column], labels=[0, 1])
        assert float(metric.result()) == pytest.approx(expected, rel=1e-5), label
    restored = LabelLogLoss.from_config(LabelLogLoss("epidural").get_config())
    assert (restored.label, restored.name) == ("epidural", "log_loss_epidural")
    with pytest.raises(ValueError, match="`label` must be one of"):
        LabelLogLoss("bleed")
