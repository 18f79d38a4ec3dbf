"""The backbone table: every slice-model backbone `rsna` can build, as data.

One row per name: the ``keras.applications`` constructor, the input scaling its
pretrained weights expect, and the smallest input it accepts. :mod:`rsna.config`
checks names against it and :mod:`rsna.training.models` builds from it. Nothing here
imports Keras.

Scalings, from x in [0, 1] (the model divides the uint8 input by 255 first):

* ``unit``: x as it is (the small CNN, trained from scratch);
* ``raw``: 255 x, for backbones that normalise inside (EfficientNet, EfficientNetV2,
  ConvNeXt, MobileNetV3);
* ``tf``: 2 x - 1, the [-1, 1] of ResNetV2, Inception, Xception and MobileNet;
* ``torch``: (x - ImageNet mean) / ImageNet std, for DenseNet;
* ``caffe``: 255 x - 255 ImageNet mean, for ResNet (the channels are CT windows, not
  colours, so there is no channel flip);
* ``preset``: the scale and offset of a keras-hub preset's image converter, applied to
  255 x (the ``keras_hub`` row: the architecture and weights come from the preset).

Each family's scaling follows its ``keras.applications`` ``preprocess_input``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["BACKBONES", "HUB", "Backbone", "Scaling", "closest_backbone"]

#: The backbone name whose architecture, weights and input scaling come from a keras-hub
#: preset folder given as ``model.weights``.
HUB = "keras_hub"

Scaling = Literal["unit", "raw", "tf", "torch", "caffe", "preset"]


@dataclass(frozen=True)
class Backbone:
    """One backbone.

    Attributes:
        name: the config's ``model.backbone`` value.
        constructor: the function of ``keras.applications``; "" for the small CNN.
        scaling: the input scaling of its pretrained weights (see the module docstring).
        min_size: the smallest ``image.size`` it can be built for.
        imagenet_rescaling: Keras adds one more input layer when ``weights="imagenet"``
            (EfficientNet B0-B7 rescale by 1/sqrt(ImageNet std) after normalising, see
            ``keras/src/applications/efficientnet.py``); weights from a file need it too.
    """

    name: str
    constructor: str
    scaling: Scaling
    min_size: int = 32
    imagenet_rescaling: bool = False


def _table(*rows: Backbone) -> Mapping[str, Backbone]:
    return {row.name: row for row in rows}


#: Every buildable backbone, by name: the families the top RSNA solutions used
#: (EfficientNet, DenseNet, ResNet/ResNeXt-like, Inception, Xception) and more.
BACKBONES: Mapping[str, Backbone] = _table(
    Backbone("small_cnn", "", "unit"),
    Backbone(HUB, "", "preset"),
    *(
        Backbone(f"EfficientNetB{i}", f"EfficientNetB{i}", "raw", imagenet_rescaling=True)
        for i in range(8)
    ),
    *(
        Backbone(f"EfficientNetV2{v}", f"EfficientNetV2{v}", "raw")
        for v in ("B0", "B1", "B2", "B3", "S", "M", "L")
    ),
    *(Backbone(f"ConvNeXt{v}", f"ConvNeXt{v}", "raw") for v in ("Tiny", "Small", "Base", "Large")),
    *(Backbone(f"DenseNet{d}", f"DenseNet{d}", "torch") for d in (121, 169, 201)),
    *(Backbone(f"ResNet{d}", f"ResNet{d}", "caffe") for d in (50, 101, 152)),
    *(Backbone(f"ResNet{d}V2", f"ResNet{d}V2", "tf") for d in (50, 101, 152)),
    Backbone("InceptionV3", "InceptionV3", "tf", min_size=75),
    Backbone("InceptionResNetV2", "InceptionResNetV2", "tf", min_size=75),
    Backbone("Xception", "Xception", "tf", min_size=71),
    Backbone("MobileNetV2", "MobileNetV2", "tf"),
    Backbone("MobileNetV3Small", "MobileNetV3Small", "raw"),
    Backbone("MobileNetV3Large", "MobileNetV3Large", "raw"),
)


def closest_backbone(name: str) -> str | None:
    """The known backbone name closest to `name` (for error messages), or None."""
    matches = difflib.get_close_matches(name, list(BACKBONES), n=1, cutoff=0.5)
    if not matches:  # case slips: "efficientnetb0"
        lowered = {known.lower(): known for known in BACKBONES}
        matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
        matches = [lowered[m] for m in matches]
    return matches[0] if matches else None
