"""Test-time views: the transforms ``predict.tta`` names, as pure functions of a batch.

The winners predicted each slice more than once and averaged: the 1st place over random
crops and flips, the 2nd place over flips and transposes (their write-ups). A view is
applied to a whole uint8 batch ``(n, rows, cols, channels)`` after it is read, and keeps
its shape, so every model sees the size it was trained on:

* ``none``, ``hflip`` (left-right), ``vflip`` (front-back), ``transpose`` (rows and
  columns swapped);
* ``centre_crop``: the central :data:`CROP_FRACTION` of the slice, resized back;
* ``random_crop:N``: N views, each a crop of that size at an offset drawn from
  ``(seed, k)`` for k = 0..N-1, and flipped left-right or not by the same draw. One
  offset serves every image of a view, so a view does not depend on the batch.

NumPy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from rsna.errors import RsnaError

__all__ = [
    "CROP_FRACTION",
    "MAX_RANDOM_CROPS",
    "VIEW_NAMES",
    "View",
    "ViewError",
    "apply_view",
    "crop_box",
    "expand_views",
]

#: The fixed views ``predict.tta`` may name; ``random_crop:N`` adds N seeded crops.
VIEW_NAMES = ("none", "hflip", "vflip", "transpose", "centre_crop")
RANDOM_CROP = "random_crop"
#: Side of a crop view over the slice's: 224 of 256, the centre crop of ImageNet
#: evaluation since AlexNet and ResNet.
CROP_FRACTION = 0.875
#: Most random crops one ``random_crop:N`` may ask for (the 1st place used 10 views).
MAX_RANDOM_CROPS = 64


class ViewError(RsnaError):
    """A ``predict.tta`` entry that names no view."""


@dataclass(frozen=True)
class View:
    """One test-time view: a name of :data:`VIEW_NAMES`, or ``random_crop`` and its index."""

    name: str
    index: int = 0

    @property
    def label(self) -> str:
        """How reports name it: ``hflip``, ``random_crop#3``."""
        return f"{self.name}#{self.index}" if self.name == RANDOM_CROP else self.name


def expand_views(tta: Sequence[str]) -> tuple[View, ...]:
    """The views of ``predict.tta``, in order: ``random_crop:N`` becomes N views.

    Raises:
        ViewError: an unknown name, a bad N, no view at all, or a view named twice.
    """
    views: list[View] = []
    for entry in tta:
        name, _, count = str(entry).partition(":")
        if name in VIEW_NAMES and not count:
            views.append(View(name))
        elif name == RANDOM_CROP and count.isdigit() and 1 <= int(count) <= MAX_RANDOM_CROPS:
            views += [View(RANDOM_CROP, k) for k in range(int(count))]
        else:
            raise ViewError(
                f"`predict.tta` entries must be one of {VIEW_NAMES} or "
                f"'random_crop:N' with N in [1, {MAX_RANDOM_CROPS}]. Received: {entry!r}"
            )
    if not views:
        raise ViewError("`predict.tta` must name at least one view. Received: tta=[]")
    if len(set(views)) < len(views):
        raise ViewError(f"`predict.tta` names a view twice. Received: tta={list(tta)!r}")
    return tuple(views)


def crop_box(view: View, *, rows: int, cols: int, seed: int) -> tuple[int, int, int, int, bool]:
    """``(top, left, height, width, flip)`` of a crop view on a ``rows x cols`` slice."""
    height, width = max(1, round(rows * CROP_FRACTION)), max(1, round(cols * CROP_FRACTION))
    if view.name == "centre_crop":
        return (rows - height) // 2, (cols - width) // 2, height, width, False
    rng = np.random.default_rng([seed, view.index])
    top, left = (int(v) for v in rng.integers(0, [rows - height + 1, cols - width + 1]))
    return top, left, height, width, bool(rng.random() < 0.5)


def apply_view(x: np.ndarray, view: View, *, seed: int = 0) -> np.ndarray:
    """`x` (n, rows, cols, channels) seen through `view`, same shape and dtype.

    Args:
        x: a batch of images.
        view: the view.
        seed: seeds the random crops (ignored by the other views).
    """
    if view.name == "none":
        return x
    if view.name == "hflip":
        return x[:, :, ::-1]
    if view.name == "vflip":
        return x[:, ::-1]
    if view.name == "transpose":
        if x.shape[1] != x.shape[2]:
            raise ViewError(f"`transpose` needs square images. Received: shape={x.shape}")
        return x.transpose(0, 2, 1, 3)
    if view.name not in ("centre_crop", RANDOM_CROP):
        raise ViewError(f"`view` must be one of {VIEW_NAMES} or {RANDOM_CROP}. Received: {view!r}")
    n, rows, cols, channels = x.shape
    top, left, height, width, flip = crop_box(view, rows=rows, cols=cols, seed=seed)
    out = np.empty_like(x)
    for k in range(n):
        crop = x[k, top : top + height, left : left + width]
        crop = crop[:, ::-1] if flip else crop
        resized = cv2.resize(np.ascontiguousarray(crop), (cols, rows), interpolation=cv2.INTER_LINEAR)
        out[k] = resized.reshape(rows, cols, channels)
    return out
