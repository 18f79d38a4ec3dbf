"""The backbone table: every slice-model backbone `rsna` can build, as data.

One row per name: the ``keras.applications`` constructor, the input scaling its
pretrained weights expect, and the smallest input it accepts. :mod:`rsna.config`
checks names against it and :mod:`rsna.training.models` builds from it. Nothing here
imports Keras.

Scalings, from x in [0, 1] (the model divides the uint8 input by 255 first):

* ``unit``: x as it is (the small CNN, trained from scratch);
* ``raw``: 255 x, for backbones that normalise inside (EfficientNet, ConvNeXt);
* ``tf``: 2 x - 1, the [-1, 1] of ResNetV2, Inception, Xception and MobileNet;
* ``torch``: (x - ImageNet mean) / ImageNet std, for DenseNet;
* ``caffe``: 255 x - 255 ImageNet mean, for ResNet (the channels are CT windows, not
  colours, so there is no channel flip).

Each family's scaling follows its ``keras.applications`` ``preprocess_input``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["BACKBONES", "Backbone", "Scaling", "closest_backbone"]

Scaling = Literal["unit", "raw", "tf", "torch", "caffe"]


@dataclass(frozen=True)
class Backbone:
    """One backbone.

    Attributes:
        name: the config's ``model.backbone`` value.
        constructor: the function of ``keras.applications``; "" for the small CNN.
        scaling: the input scaling of its pretrained weights (see the module docstring).
        min_size: the smallest ``image.size`` it can be built for.
    """

    name: str
    constructor: str
    scaling: Scaling
    min_size: int = 32


def _table(*rows: Backbone) -> Mapping[str, Backbone]:
    return {row.name: row for row in rows}


#: Every buildable backbone, by name.
BACKBONES: Mapping[str, Backbone] = _table(
    Backbone("small_cnn", "", "unit"),
    Backbone("EfficientNetB0", "EfficientNetB0", "raw"),
    Backbone("EfficientNetB1", "EfficientNetB1", "raw"),
    Backbone("EfficientNetB2", "EfficientNetB2", "raw"),
    Backbone("EfficientNetB3", "EfficientNetB3", "raw"),
    Backbone("EfficientNetV2B0", "EfficientNetV2B0", "raw"),
    Backbone("ResNet50", "ResNet50", "caffe"),
    Backbone("ResNet50V2", "ResNet50V2", "tf"),
    Backbone("DenseNet121", "DenseNet121", "torch"),
    Backbone("InceptionV3", "InceptionV3", "tf", min_size=75),
    Backbone("Xception", "Xception", "tf", min_size=71),
    Backbone("MobileNetV2", "MobileNetV2", "tf"),
    Backbone("ConvNeXtTiny", "ConvNeXtTiny", "raw"),
)


def closest_backbone(name: str) -> str | None:
    """The known backbone name closest to `name` (for error messages), or None."""
    matches = difflib.get_close_matches(name, list(BACKBONES), n=1, cutoff=0.5)
    if not matches:  # case slips: "efficientnetb0"
        lowered = {known.lower(): known for known in BACKBONES}
        matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
        matches = [lowered[m] for m in matches]
    return matches[0] if matches else None
