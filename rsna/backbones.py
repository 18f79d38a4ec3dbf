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
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["BACKBONES", "HUB", "Backbone", "Cost", "Scaling", "closest_backbone"]

#: The backbone name whose architecture, weights and input scaling come from a keras-hub
#: preset folder given as ``model.weights``.
HUB = "keras_hub"

Scaling = Literal["unit", "raw", "tf", "torch", "caffe", "preset"]


@dataclass(frozen=True)
class Cost:
    """A backbone's published compute for one image: `gflops` (multiply-adds, as the
    papers count them) at `size` x `size`, from `source`."""

    gflops: float
    size: int
    source: str

    def at(self, size: int) -> float:
        """GFLOPs at another square input size (convolutions scale with the area)."""
        return self.gflops * (size / self.size) ** 2


_EFFICIENTNET = "Tan & Le 2019, EfficientNet, Table 2"
_RESNET = "He et al. 2016, Deep Residual Learning, Table 1"
#: Published per-image compute of the backbones whose papers give it; `rsna plan` scales
#: training time by it. The rest have none here, and `rsna plan` asks for a measured rate.
_COSTS = {
    **{
        f"EfficientNetB{i}": Cost(gflops, size, _EFFICIENTNET)
        for i, (gflops, size) in enumerate(
            [(0.39, 224), (0.70, 240), (1.0, 260), (1.8, 300), (4.2, 380), (9.9, 456), (19.0, 528), (37.0, 600)]
        )
    },
    "ResNet50": Cost(3.8, 224, _RESNET),
    "ResNet101": Cost(7.6, 224, _RESNET),
    "ResNet152": Cost(11.3, 224, _RESNET),
    "MobileNetV2": Cost(0.30, 224, "Sandler et al. 2018, MobileNetV2, Table 3"),
}  # fmt: skip

#: Parameters (without the top, at 3 channels) and pooled feature width of each
#: ``keras.applications`` backbone, as Keras 3.15 builds them (``count_params()``;
#: tests/training/test_backbones.py rebuilds the quick ones and compares). The small
#: CNN's are the whole demo model's. They size checkpoints and embeddings in `rsna plan`.
_SIZES = {
    "small_cnn": (296_502, 256),
    "EfficientNetB0": (4_049_571, 1280), "EfficientNetB1": (6_575_239, 1280),
    "EfficientNetB2": (7_768_569, 1408), "EfficientNetB3": (10_783_535, 1536),
    "EfficientNetB4": (17_673_823, 1792), "EfficientNetB5": (28_513_527, 2048),
    "EfficientNetB6": (40_960_143, 2304), "EfficientNetB7": (64_097_687, 2560),
    "EfficientNetV2B0": (5_919_312, 1280), "EfficientNetV2B1": (6_931_124, 1280),
    "EfficientNetV2B2": (8_769_374, 1408), "EfficientNetV2B3": (12_930_622, 1536),
    "EfficientNetV2S": (20_331_360, 1280), "EfficientNetV2M": (53_150_388, 1280),
    "EfficientNetV2L": (117_746_848, 1280),
    "ConvNeXtTiny": (27_820_128, 768), "ConvNeXtSmall": (49_454_688, 768),
    "ConvNeXtBase": (87_566_464, 1024), "ConvNeXtLarge": (196_230_336, 1536),
    "DenseNet121": (7_037_504, 1024), "DenseNet169": (12_642_880, 1664),
    "DenseNet201": (18_321_984, 1920),
    "ResNet50": (23_587_712, 2048), "ResNet101": (42_658_176, 2048),
    "ResNet152": (58_370_944, 2048), "ResNet50V2": (23_564_800, 2048),
    "ResNet101V2": (42_626_560, 2048), "ResNet152V2": (58_331_648, 2048),
    "InceptionV3": (21_802_784, 2048), "InceptionResNetV2": (54_336_736, 1536),
    "Xception": (20_861_480, 2048), "MobileNetV2": (2_257_984, 1280),
    "MobileNetV3Small": (939_120, 576), "MobileNetV3Large": (2_996_352, 960),
}  # fmt: skip


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
        params, features: parameters and pooled feature width (0 where unknown: a
            keras-hub preset's come with the preset).
        cost: the published compute, or None.
    """

    name: str
    constructor: str
    scaling: Scaling
    min_size: int = 32
    imagenet_rescaling: bool = False
    params: int = 0
    features: int = 0
    cost: Cost | None = None


def _table(*rows: Backbone) -> Mapping[str, Backbone]:
    """The rows by name, each with its sizes and published cost."""
    filled = (
        replace(row, params=_SIZES.get(row.name, (0, 0))[0], features=_SIZES.get(row.name, (0, 0))[1], cost=_COSTS.get(row.name))
        for row in rows
    )  # fmt: skip
    return {row.name: row for row in filled}


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
