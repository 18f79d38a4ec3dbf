"""Head crop: find the head on a slice and cut a square around it before resizing.

About a third of a 512x512 head CT is air (and the scanner table). The top RSNA 2019
teams cropped to the head's bounding box first, so the network's pixels go to the brain.
The head is the largest connected component above :data:`HEAD_HU` (8-connected, by
``cv2.connectedComponentsWithStats``); the table, which is thinner, rarely wins. A slice
with no component of at least :data:`MIN_HEAD_FRACTION` of its pixels (all air, or
noise) keeps its full field of view, and the caller counts it.

Pure functions on 2-D arrays; :class:`rsna.data.windowing.Preprocessor` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from rsna.errors import RsnaError

__all__ = [
    "CROPS",
    "CROP_MARGIN",
    "HEAD_HU",
    "MIN_HEAD_FRACTION",
    "Box",
    "Crop",
    "CropError",
    "crop_to_box",
    "head_box",
    "head_coverage",
    "head_mask",
    "largest_component",
]

Crop = Literal["none", "head"]
CROPS: tuple[str, ...] = ("none", "head")
#: Soft tissue, fat and bone lie above -200 HU; air (-1000) and most foam pads below.
HEAD_HU = -200.0
#: The margin on each side of the head's box, as a fraction of its longer side: enough for
#: the scalp's noisy edge, small because every pixel of margin is a pixel of air.
CROP_MARGIN = 0.02
#: A component smaller than this fraction of the slice is not a head.
MIN_HEAD_FRACTION = 0.01


class CropError(RsnaError):
    """Bad crop options."""


@dataclass(frozen=True)
class Box:
    """A square region ``[top, top + side) x [left, left + side)``; it may reach past the
    slice's edges, which are then padded."""

    top: int
    left: int
    side: int


def head_mask(
    pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0, threshold: float = HEAD_HU
) -> np.ndarray:
    """uint8 1 where ``pixels * slope + intercept > threshold`` (DICOM (0028,1053), (0028,1052)).

    The threshold moves to the stored values' units, so no HU array is made.
    """
    if not slope > 0:
        raise CropError(f"`slope` must be positive. Received: slope={slope!r}")
    return (pixels > (threshold - intercept) / slope).view(np.uint8)


def largest_component(mask: np.ndarray) -> tuple[int, int, int, int, int] | None:
    """(top, left, height, width, area) of the largest 8-connected component of a uint8
    mask, or None if the mask is empty."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height, area = (int(v) for v in stats[best])
    return top, left, height, width, area


def head_box(
    pixels: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    threshold: float = HEAD_HU,
    margin: float = CROP_MARGIN,
    min_fraction: float = MIN_HEAD_FRACTION,
) -> Box | None:
    """The square around the head of one slice with `margin`, or None for no head."""
    if not 0 <= margin <= 1:
        raise CropError(f"`margin` must be in [0, 1]. Received: margin={margin!r}")
    found = largest_component(
        head_mask(pixels, slope=slope, intercept=intercept, threshold=threshold)
    )
    if found is None or found[4] < min_fraction * pixels.size:
        return None
    top, left, height, width, _ = found
    side = max(height, width)
    side += 2 * int(round(margin * side))
    return Box(top=top + (height - side) // 2, left=left + (width - side) // 2, side=side)


def crop_to_box(image: np.ndarray, box: Box, *, value: float = 0) -> np.ndarray:
    """The `box` of a 2-D image; parts past its edges are filled with `value`."""
    height, width = image.shape[:2]
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.top + box.side, height), min(box.left + box.side, width)
    if bottom <= top or right <= left:  # the box misses the image
        return np.full((box.side, box.side), value, image.dtype)
    inside = image[top:bottom, left:right]
    pads = (
        top - box.top,
        box.top + box.side - bottom,
        left - box.left,
        box.left + box.side - right,
    )
    if not any(pads):
        return inside
    return cv2.copyMakeBorder(inside, *pads, cv2.BORDER_CONSTANT, value=value)


def head_coverage(hu: np.ndarray, *, size: int, box: Box | None) -> float:
    """The fraction of the (size, size) network input covered by head pixels, when a HU
    slice is cut to `box` (None: the full view, padded to a square) and resized."""
    mask = head_mask(hu).astype(np.float32)
    if box is not None:
        mask = crop_to_box(mask, box)
    side = max(mask.shape)
    square = np.zeros((side, side), np.float32)
    square[: mask.shape[0], : mask.shape[1]] = mask
    return float(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA).mean())
