"""Training-time augmentation: one random affine warp per sample, with cv2.

A horizontal flip (left-right is a plausible head), a small shift, scale and rotation,
and when asked a vertical flip and a random resized crop, composed into a single 2x3
matrix and applied with one ``cv2.warpAffine`` to every channel, so adjacent-slice
context channels move together. Uncovered pixels become 0, which is the level of air in
every preset window. Then, when asked, each window's levels are jittered (one lookup
table per window), coarse rectangles are erased to air, and the context slices are put
in reverse z order.

The warp samples bilinearly by default, as the top solutions' augmentation libraries
do. Bilinear sampling averages neighbours at random sub-pixel offsets, which lowers the
pixel noise of every training image but of no validation image; on the demo's phantoms
(pure Gaussian noise on flat tissue) batch norm then learned statistics that did not fit
unwarped slices, and validation swung from epoch to epoch (fold 2's inference-mode loss
went 0.11 -> 0.93 -> 0.46 while the same weights with batch statistics stayed at 0.08).
``interpolation = "nearest"`` keeps every pixel value as it was. On the textured phantoms
of issue 23 it no longer helped the demo by a fold standard deviation, so every shipped
config samples bilinearly.

Randomness comes only from the generator passed in; the data generator seeds it from
``(seed, epoch, batch index)``, so worker processes never repeat each other and a
resumed epoch sees the same augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from rsna.errors import RsnaError

__all__ = [
    "INTERPOLATIONS",
    "Augment",
    "AugmentError",
    "Interpolation",
    "apply_affine",
    "augment",
    "device_unsupported",
    "erase_boxes",
    "is_identity",
    "jitter_levels",
    "random_affine",
    "reverse_slices",
]


#: cv2 flags for `Augment.interpolation`.
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
}

Interpolation = Literal["nearest", "linear", "cubic"]


class AugmentError(RsnaError):
    """An augmentation option is out of range."""


@dataclass(frozen=True)
class Augment:
    """Ranges of the random augmentation; the options after `interpolation` are off by
    default, and an option that is off draws no random numbers (so turning one on does
    not change what the others do for a seed).

    Attributes:
        flip: flip left-right with probability 0.5.
        shift: largest shift, as a fraction of the image size, in [0, 0.5].
        scale: largest relative zoom, in or out, in [0, 0.5].
        rotate: largest rotation, degrees, in [0, 180].
        interpolation: how the warp samples pixels. ``"linear"`` (the default) is what
            the top solutions' augmentation libraries use (albumentations' and cv2's
            default); ``"nearest"`` keeps the pixel statistics of unwarped slices, which
            the first, flat phantoms needed (see the module docstring).
        vflip: also flip up-down with probability 0.5.
        crop_area: random resized crop: the range of the crop's area as a fraction of the
            image, in (0, 1]; (1, 1) is off. Torchvision's default is (0.08, 1); heads
            fill most of a head-cropped slice, so (0.6, 1) is a sane start.
        crop_ratio: the range of the crop's width / height, log-uniform, in [1/4, 4].
        erase: probability of coarse erasing, in [0, 1].
        erase_holes: at most this many rectangles erased (to air, 0), at least one.
        erase_size: the largest side of a rectangle, as a fraction of the image, in (0, 1].
        brightness: largest shift of each window's levels, as a fraction of 255, in [0, 0.5].
        contrast: largest relative change of each window's contrast about mid-grey, in [0, 0.5].
        zflip: probability of reversing the order of the context slices (s+1 .. s-1), in
            [0, 1]: a head scanned the other way up the z axis. The 1st place swapped the
            neighbours of its 3-slice input.
        device: run the flips, the warp and the level jitter as Keras layers in the
            model (on the GPU or TPU, training only; :func:`device_unsupported` lists what
            they cannot do) instead of with cv2 on the CPU.
    """

    flip: bool = True
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 15.0
    interpolation: Interpolation = "linear"
    vflip: bool = False
    crop_area: tuple[float, ...] = (1.0, 1.0)
    crop_ratio: tuple[float, ...] = (1.0, 1.0)
    erase: float = 0.0
    erase_holes: int = 4
    erase_size: float = 0.2
    brightness: float = 0.0
    contrast: float = 0.0
    zflip: float = 0.0
    device: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise AugmentError(
                f"`interpolation` must be one of {sorted(INTERPOLATIONS)}. "
                f"Received: interpolation={self.interpolation!r}"
            )
        ranges = (("shift", 0.5), ("scale", 0.5), ("rotate", 180.0), ("erase", 1.0),
                  ("brightness", 0.5), ("contrast", 0.5), ("zflip", 1.0))  # fmt: skip
        for name, high in ranges:
            value = getattr(self, name)
            if not 0.0 <= value <= high:
                raise AugmentError(f"`{name}` must be in [0, {high:g}]. Received: {name}={value!r}")
        area, ratio = tuple(self.crop_area), tuple(self.crop_ratio)
        if len(area) != 2 or not 0.0 < area[0] <= area[1] <= 1.0:
            raise AugmentError(
                f"`crop_area` must be two numbers low <= high in (0, 1]. Received: crop_area={area!r}"
            )
        if len(ratio) != 2 or not 0.25 <= ratio[0] <= ratio[1] <= 4.0:
            raise AugmentError(
                f"`crop_ratio` must be two numbers low <= high in [0.25, 4]. Received: crop_ratio={ratio!r}"
            )
        if not 1 <= self.erase_holes <= 64:
            raise AugmentError(
                f"`erase_holes` must be in [1, 64]. Received: erase_holes={self.erase_holes!r}"
            )
        if not 0.0 < self.erase_size <= 1.0:
            raise AugmentError(
                f"`erase_size` must be in (0, 1]. Received: erase_size={self.erase_size!r}"
            )


def random_affine(rng: np.random.Generator, *, size: int, config: Augment) -> np.ndarray:
    """A 2x3 float32 matrix: flip, then rotate and scale about the centre, then shift."""
    centre = (size - 1) / 2.0
    angle = rng.uniform(-config.rotate, config.rotate)
    zoom = rng.uniform(1.0 - config.scale, 1.0 + config.scale)
    dx, dy = rng.uniform(-config.shift, config.shift, size=2) * size
    flip = config.flip and rng.random() < 0.5
    rotation = cv2.getRotationMatrix2D((centre, centre), angle, zoom)  # 2x3
    matrix = np.vstack([rotation, [0.0, 0.0, 1.0]])
    if flip:
        mirror = np.array([[-1.0, 0.0, 2 * centre], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        matrix = matrix @ mirror
    matrix[0, 2] += dx
    matrix[1, 2] += dy
    if config.vflip and rng.random() < 0.5:
        matrix = matrix @ np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 2 * centre], [0.0, 0.0, 1.0]])
    if tuple(config.crop_area) != (1.0, 1.0) or tuple(config.crop_ratio) != (1.0, 1.0):
        matrix = matrix @ _resized_crop(rng, size=size, config=config)
    return matrix[:2].astype(np.float32)


def _resized_crop(rng: np.random.Generator, *, size: int, config: Augment) -> np.ndarray:
    """The 3x3 map of a random crop (area and width/height from the config's ranges,
    placed anywhere inside) onto the whole image."""
    area = rng.uniform(*config.crop_area)
    ratio = math.exp(rng.uniform(math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])))
    width = min(size * math.sqrt(area * ratio), size)
    height = min(size * math.sqrt(area / ratio), size)
    left = rng.uniform(0, size - width)
    top = rng.uniform(0, size - height)
    sx, sy = size / width, size / height  # the forward map: the crop's corner to (0, 0)
    return np.array([[sx, 0.0, -left * sx], [0.0, sy, -top * sy], [0.0, 0.0, 1.0]])


def apply_affine(
    image: np.ndarray, matrix: np.ndarray, *, interpolation: Interpolation = "nearest"
) -> np.ndarray:
    """Warp an (H, W, C) image with a 2x3 matrix; uncovered pixels are 0."""
    height, width = image.shape[:2]
    warped = cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=INTERPOLATIONS[interpolation],
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return warped.reshape(image.shape)


def augment(
    image: np.ndarray, rng: np.random.Generator, config: Augment, *, windows: int | None = None
) -> np.ndarray:
    """One random warp of a square (size, size, channels) uint8 image, then (when on) the
    level jitter of each window and coarse erasing.

    Args:
        windows: channels per slice; channel c is window ``c % windows``, so context
            slices get the same jitter as the centre. Default: every channel its own.
    """
    matrix = random_affine(rng, size=image.shape[0], config=config)
    out = apply_affine(image, matrix, interpolation=config.interpolation)
    if config.brightness or config.contrast:
        out = jitter_levels(out, rng, brightness=config.brightness, contrast=config.contrast, windows=windows)  # fmt: skip
    if config.erase and rng.random() < config.erase:
        out = erase_boxes(out, rng, holes=config.erase_holes, largest=config.erase_size)
    if config.zflip and rng.random() < config.zflip:
        out = reverse_slices(out, windows=windows or out.shape[-1])
    return out


def reverse_slices(image: np.ndarray, *, windows: int) -> np.ndarray:
    """The context slices of an (H, W, slices * windows) image in reverse order, each
    slice's windows kept in theirs."""
    height, width, channels = image.shape
    blocks = image.reshape(height, width, channels // windows, windows)
    return np.ascontiguousarray(blocks[:, :, ::-1]).reshape(image.shape)


def jitter_levels(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float,
    contrast: float,
    windows: int | None = None,
) -> np.ndarray:
    """A random contrast (about mid-grey) and brightness per window, through a 256-entry
    lookup table per window; levels are clipped to 0-255."""
    channels = image.shape[-1]
    windows = windows or channels
    levels = np.arange(256, dtype=np.float32)
    out = np.empty_like(image)
    for w in range(windows):
        gain = 1.0 + rng.uniform(-contrast, contrast)
        offset = rng.uniform(-brightness, brightness) * 255.0
        table = np.clip(np.rint((levels - 127.5) * gain + 127.5 + offset), 0, 255).astype(np.uint8)
        out[..., w::windows] = table[image[..., w::windows]]
    return out


def erase_boxes(
    image: np.ndarray, rng: np.random.Generator, *, holes: int, largest: float
) -> np.ndarray:
    """Set 1 to `holes` random rectangles (sides up to `largest` x the image) to 0, air,
    on every channel (coarse dropout)."""
    out = image.copy()
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(1, holes + 1))):
        h = max(1, int(rng.uniform(0.05, 1.0) * largest * height))
        w = max(1, int(rng.uniform(0.05, 1.0) * largest * width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out[top : top + h, left : left + w] = 0
    return out


def device_unsupported(config: Augment) -> list[str]:
    """The options of `config` that the device-side layers cannot apply (they are the
    CPU's: a resized crop, erasing, z flips, bicubic sampling)."""
    off = Augment()
    names = ("crop_area", "crop_ratio", "erase", "zflip")
    found = [n for n in names if getattr(config, n) != getattr(off, n)]
    return found + (["interpolation"] if config.interpolation == "cubic" else [])


def is_identity(config: Augment) -> bool:
    """True when `config` can only return the image unchanged."""
    return (
        not config.flip
        and not config.vflip
        and config.shift == 0
        and config.scale == 0
        and math.isclose(config.rotate, 0)
        and tuple(config.crop_area) == (1.0, 1.0)
        and tuple(config.crop_ratio) == (1.0, 1.0)
        and config.erase == 0
        and config.brightness == 0
        and config.contrast == 0
        and config.zflip == 0
    )
