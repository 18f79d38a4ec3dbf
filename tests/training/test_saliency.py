"""rsna.training.saliency: SmoothGrad-squared in closed form on a linear model, the mass
inside a region, and the explain figure (the demo test checks it finds planted bleeds)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from rsna.data.labels import LABELS
from rsna.training.saliency import ExplainError, saliency, saliency_mass


def linear_model(kernel: np.ndarray) -> keras.Model:
    """uint8 (4, 4, 2) -> /255 -> flatten -> logits = x @ kernel: the gradient is the kernel."""
    inputs = keras.Input((4, 4, 2), dtype="uint8")
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(inputs)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(len(LABELS), use_bias=False, name="logits")
    outputs = keras.layers.Activation("sigmoid")(dense(x))
    model = keras.Model(inputs, outputs)
    dense.set_weights([kernel])
    return model


def test_smoothgrad_squared_of_a_linear_model_is_its_squared_kernel():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(32, len(LABELS))).astype(np.float32)
    image = rng.integers(0, 256, (4, 4, 2), dtype=np.uint8)
    maps = saliency(linear_model(kernel), image, samples=4, noise=0.3, seed=1)
    expected = np.square(kernel.reshape(4, 4, 2, len(LABELS))).mean(axis=2)  # over channels
    expected = np.moveaxis(expected / expected.sum(axis=(0, 1)), -1, 0)
    np.testing.assert_allclose(maps, expected, rtol=1e-5)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_saliency_mass_is_the_share_inside_the_region():
    maps = np.zeros((6, 4, 4), np.float32)
    maps[:, 0, 0], maps[:, 3, 3] = 3.0, 1.0
    region = np.zeros((4, 4), bool)
    region[0, 0] = True
    np.testing.assert_allclose(saliency_mass(maps, region), 0.75)


def test_bad_options_are_refused():
    model = linear_model(np.zeros((32, 6), np.float32))
    with pytest.raises(ExplainError, match="`samples` must be positive"):
        saliency(model, np.zeros((4, 4, 2), np.uint8), samples=0)
    maps = saliency(model, np.zeros((4, 4, 2), np.uint8), samples=2)
    assert not maps.any()  # a zero gradient gives zero maps, not NaN
