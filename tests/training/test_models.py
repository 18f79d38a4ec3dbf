"""rsna.training.models: input, heads, prior bias, mixed precision, local weights, safe loading."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from rsna.config import ConfigError, config_from_dict
from rsna.training.models import build_model, load_model


def config(*, size: int = 32, **model):
    return config_from_dict(
        {"image": {"size": size, "context": 1}, "model": {"backbone": "small_cnn", **model}}
    )


def test_small_cnn_takes_uint8_and_gives_six_probabilities():
    model = build_model(config())
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 32, 9)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 9), dtype=np.uint8)
    p = model.predict(x, verbose=0)
    assert p.shape == (2, 6) and ((p > 0) & (p < 1)).all()
    for name in ("features", "logits", "probabilities"):
        model.get_layer(name)


def test_prior_sets_the_starting_predictions():
    prior = np.array([0.01, 0.05, 0.04, 0.05, 0.06, 0.14])
    model = build_model(config(dropout=0.0), prior=prior)
    dense = model.get_layer("logits")
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), dense.get_weights()[1]])
    p = model.predict(np.zeros((1, 32, 32, 9), np.uint8), verbose=0)
    np.testing.assert_allclose(p[0], prior, rtol=1e-4)


def test_mixed_precision_keeps_the_head_float32_and_restores_the_policy():
    before = keras.config.dtype_policy().name
    model = build_model(config(mixed_precision=True))
    assert model.get_layer("conv1a").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert keras.config.dtype_policy().name == before


def test_keras_applications_backbone_with_a_local_weights_file(tmp_path):
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    model = build_model(config(backbone="MobileNetV2", weights=str(path)))
    model.get_layer("channel_adapter")  # 9 context channels mapped to the 3 the weights expect
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(inner.get_weights()[0], backbone.get_weights()[0])
    scratch = build_model(config(backbone="MobileNetV2"))
    with pytest.raises(ValueError):
        scratch.get_layer("channel_adapter")  # no weights file: the backbone takes 9 channels


def test_an_unbuildable_backbone_is_a_config_error():
    # The backbone table knows InceptionV3 needs at least 75x75: the config refuses it...
    with pytest.raises(ConfigError, match="`image.size` must be >= 75 for InceptionV3"):
        config(backbone="InceptionV3")
    # ...and a config that slipped past the check fails as a ConfigError when built.
    valid = config(backbone="InceptionV3", size=75)
    small = dataclasses.replace(valid, image=dataclasses.replace(valid.image, size=32))
    with pytest.raises(ConfigError, match="`model.backbone`='InceptionV3' cannot be built"):
        build_model(small)


def test_saved_model_loads_in_safe_mode(tmp_path):
    model = build_model(config())
    path = tmp_path / "m.keras"
    model.save(path)
    x = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 9), dtype=np.uint8)
    np.testing.assert_allclose(
        load_model(path).predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )
