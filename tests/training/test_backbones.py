"""Every row of rsna.backbones.BACKBONES builds through build_model and predicts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from rsna.backbones import BACKBONES, HUB, closest_backbone
from rsna.config import config_from_dict
from rsna.training.models import build_model

#: One backbone per input scaling runs with the quick tests; the rest are slow (1-12 s each).
_QUICK = {"small_cnn", "EfficientNetB0", "MobileNetV2", "DenseNet121", "ResNet50"}


def _cases():
    for name, row in BACKBONES.items():
        if name == HUB:  # built from a preset folder: tests/training/test_models.py
            continue
        marks = [] if name in _QUICK else [pytest.mark.slow]
        yield pytest.param(row, id=name, marks=marks)


@pytest.mark.parametrize("backbone", _cases())
def test_every_backbone_builds_at_its_smallest_size_and_predicts(backbone):
    size = max(32, backbone.min_size)
    config = config_from_dict(
        {"image": {"size": size, "context": 0}, "model": {"backbone": backbone.name, "weights": "random"}}
    )
    model = build_model(config)
    x = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    p = model.predict(x, verbose=0)
    # Random deep networks can saturate the sigmoid; the values must still be probabilities.
    assert p.shape == (1, 6) and ((p >= 0) & (p <= 1)).all()
    # the table's sizes, which `rsna plan` uses for checkpoints and embeddings
    assert model.get_layer("features").output.shape[-1] == backbone.features
    head = 6 * (backbone.features + 1)  # the six logits
    assert backbone.params <= model.count_params() <= backbone.params + head + 64
    keras.backend.clear_session()


def test_the_table_names_real_keras_constructors_once():
    assert list(BACKBONES) == [row.name for row in BACKBONES.values()]
    for row in BACKBONES.values():
        assert row.constructor == "" or callable(getattr(keras.applications, row.constructor))
    # Only EfficientNet B0-B7 gain a layer for ImageNet weights (keras efficientnet.py).
    assert {r.name for r in BACKBONES.values() if r.imagenet_rescaling} == {
        f"EfficientNetB{i}" for i in range(8)
    }
    assert len(BACKBONES) == 36  # 34 keras.applications, the small CNN, keras_hub


def test_a_misspelt_backbone_finds_the_closest():
    assert closest_backbone("efficientnetb3") == "EfficientNetB3"
    assert closest_backbone("ConvNextLarge") == "ConvNeXtLarge"
    assert closest_backbone("zzzz") is None
