"""Intensity windows and the slice preprocessor: DICOM or HU in, uint8 channels out.

A :class:`Window` maps Hounsfield units to display levels 0-255. The named presets are
the ones used by the top RSNA 2019 solutions (brain 40/80, subdural 80/200, soft tissue
40/380, bone 600/2800). The linear window clips to ``[center - width/2, center + width/2]``
and scales to 0-255, which is *not* the DICOM VOI formula of PS3.3 C.11.2.1.2 that
``pydicom.pixels.apply_windowing`` implements.

Order of operations in :func:`preprocess`: window at full resolution, then pad to a
square and resize. Averaging display levels keeps a thin bleed beside the skull visible;
averaging HU first lets one bone pixel (1000+ HU) turn a whole 2x2 block white in the
brain window. ``scripts/bench_preprocess.py`` measures how much the order changes the
output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from rsna.data.crop import CROPS, Box, Crop, crop_to_box, head_box
from rsna.errors import RsnaError

__all__ = [
    "AIR_HU",
    "MAX_SIZE",
    "BONE",
    "BRAIN",
    "DEFAULT_WINDOWS",
    "PRESETS",
    "SIGMOID_EDGE",
    "SOFT_TISSUE",
    "SUBDURAL",
    "Curve",
    "Preprocessor",
    "Window",
    "WindowError",
    "air_level",
    "apply_window",
    "pad_to_square",
    "parse_windows",
    "preprocess",
    "resize_square",
    "window_name",
]

#: Largest output size: the top RSNA solutions used up to 512; a slice is at most 4096.
MAX_SIZE = 2048
#: HU of air: what padding to a square stands for.
AIR_HU = -1000.0
#: The sigmoid window maps the window's edges to these fractions of 255.
SIGMOID_EDGE = 1.0 / 255.0

Curve = Literal["linear", "sigmoid"]


class WindowError(RsnaError):
    """A window or preprocessing option is invalid."""


@dataclass(frozen=True)
class Window:
    """An intensity window in Hounsfield units.

    Attributes:
        center: window center (WL), HU.
        width: window width (WW), HU; must be positive.
    """

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise WindowError(f"`Window` values must be finite. Received: {self}")
        if self.width <= 0:
            raise WindowError(f"`width` must be positive. Received: width={self.width}")

    @property
    def lower(self) -> float:
        """Lowest HU that maps above 0."""
        return self.center - self.width / 2

    @property
    def upper(self) -> float:
        """Highest HU that maps below 255."""
        return self.center + self.width / 2


BRAIN = Window(center=40, width=80)
SUBDURAL = Window(center=80, width=200)
SOFT_TISSUE = Window(center=40, width=380)
BONE = Window(center=600, width=2800)

#: Named presets, as accepted by :func:`parse_windows` and the CLI.
PRESETS: Mapping[str, Window] = {
    "brain": BRAIN,
    "subdural": SUBDURAL,
    "soft": SOFT_TISSUE,
    "bone": BONE,
}
DEFAULT_WINDOWS: tuple[Window, ...] = (BRAIN, SUBDURAL, SOFT_TISSUE)


def parse_windows(spec: str | Sequence[str | Window]) -> tuple[Window, ...]:
    """Windows from names ("brain,subdural,soft"), ``center/width`` pairs or Windows.

    Raises:
        WindowError: an unknown name or a malformed pair.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    windows = []
    for item in items:
        if isinstance(item, Window):
            windows.append(item)
            continue
        name = item.strip().lower()
        if name in PRESETS:
            windows.append(PRESETS[name])
        elif "/" in name:
            center, _, width = name.partition("/")
            try:
                windows.append(Window(center=float(center), width=float(width)))
            except ValueError as exc:
                raise WindowError(
                    f"`windows` entry must be center/width. Received: {item!r}"
                ) from exc
        else:
            raise WindowError(
                f"Unknown window {item!r}. Expected one of {sorted(PRESETS)} or center/width."
            )
    if not windows:
        raise WindowError(f"`windows` must name at least one window. Received: {spec!r}")
    return tuple(windows)


def window_name(window: Window) -> str:
    """The preset name of `window`, or ``"center/width"``."""
    for name, preset in PRESETS.items():
        if preset == window:
            return name
    return f"{window.center:g}/{window.width:g}"


def apply_window(
    pixels: np.ndarray,
    window: Window,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    curve: Curve = "linear",
) -> np.ndarray:
    """Window stored values (or HU) to uint8 display levels, same shape.

    HU is ``pixels * slope + intercept`` (PS3.3 C.11.1.1.2); it is folded into the
    window so integer input is never converted to float in the common case.

    Args:
        pixels: stored values (any integer dtype) or HU (float).
        window: the window, in HU.
        slope: (0028,1053) RescaleSlope; must be positive.
        intercept: (0028,1052) RescaleIntercept.
        curve: ``"linear"``: clip and scale, rounded to nearest; ``"sigmoid"``: a
            logistic curve that maps the window's edges to 1 and 254.

    Raises:
        WindowError: a non-positive slope or an unknown curve.
    """
    if not slope > 0:
        raise WindowError(f"`slope` must be positive. Received: slope={slope}")
    if curve == "sigmoid":
        return _sigmoid_window(pixels, window, slope=slope, intercept=intercept)
    if curve != "linear":
        raise WindowError(f"`curve` must be 'linear' or 'sigmoid'. Received: curve={curve!r}")
    return _linear_window(pixels, window, slope=slope, intercept=intercept)


def _linear_window(
    pixels: np.ndarray,
    window: Window,
    *,
    slope: float,
    intercept: float,
    clamp: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The linear window; `clamp` and `out` are optional scratch arrays shaped like `pixels`."""
    alpha = 255.0 * slope / window.width
    low = (window.lower - intercept) / slope  # the window's lower edge, in stored units
    if not _exact_integer_clamp(pixels.dtype, low):
        pixels = pixels.astype(np.float32, copy=False)
    if clamp is None or clamp.dtype != pixels.dtype:
        clamp = np.empty_like(pixels)
    # convertScaleAbs computes saturate(|alpha * x + beta|): clamping at the lower edge
    # first keeps alpha * x + beta >= 0, so the absolute value never acts.
    clamped = _clamp_below(pixels, low, out=clamp)
    return cv2.convertScaleAbs(clamped, dst=out, alpha=alpha, beta=-alpha * low)


def _clamp_below(pixels: np.ndarray, low: float, *, out: np.ndarray) -> np.ndarray:
    """``max(pixels, low)`` into `out` (cv2.max is 4x faster than NumPy here).

    OpenCV's Python bindings read a one-element array as a scalar, so that case goes
    through NumPy.
    """
    if pixels.size == 1:
        return np.maximum(pixels, pixels.dtype.type(low), out=out)
    return cv2.max(pixels, float(low), dst=out)


_INTEGER_RANGES = {
    np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
    for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32)
}


def _exact_integer_clamp(dtype: np.dtype, low: float) -> bool:
    """Whether an integer array can be clamped at `low` in its own dtype without error."""
    bounds = _INTEGER_RANGES.get(dtype)
    return bounds is not None and float(low).is_integer() and bounds[0] <= low <= bounds[1]


def _sigmoid_window(
    pixels: np.ndarray, window: Window, *, slope: float, intercept: float
) -> np.ndarray:
    steepness = 2.0 * math.log((1.0 - SIGMOID_EDGE) / SIGMOID_EDGE) / window.width
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    z = np.clip((hu - np.float32(window.center)) * np.float32(steepness), -60, 60)
    return np.rint(255.0 / (1.0 + np.exp(-z))).astype(np.uint8)


def pad_to_square(image: np.ndarray, *, value: float = 0) -> np.ndarray:
    """Pad a 2-D `image` on both sides of its short axis to a square, with `value`."""
    height, width = image.shape[:2]
    if height == width:
        return image
    extra = abs(height - width)
    before, after = extra // 2, extra - extra // 2
    top, bottom = (before, after) if height < width else (0, 0)
    left, right = (before, after) if width < height else (0, 0)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)


def resize_square(image: np.ndarray, *, size: int, pad_value: float = 0) -> np.ndarray:
    """Pad a 2-D image to a square, then resize it to (size, size) with cv2.

    Shrinking uses INTER_AREA (a true average), enlarging INTER_LINEAR, as the OpenCV
    documentation recommends.
    """
    _check_size(size)
    square = pad_to_square(image, value=pad_value)
    if square.shape[0] == size:
        return square
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def preprocess(
    path_or_hu: str | os.PathLike[str] | np.ndarray,
    *,
    windows: Sequence[Window] = DEFAULT_WINDOWS,
    size: int = 256,
    curve: Curve = "linear",
    crop: Crop = "none",
) -> np.ndarray:
    """Turn a DICOM slice (path) or a 2-D HU array into uint8 (size, size, len(windows)).

    Each window is applied at full resolution. With ``crop="head"`` each channel is then
    cut to the square around the head (:func:`rsna.data.crop.head_box`); each is padded
    to a square with the level of air (-1000 HU) and resized with cv2. A path is read with
    :func:`rsna.data.dicom.read_image`, which fixes bad intercepts. To process many slices,
    keep one :class:`Preprocessor` per thread: same output, reused buffers, about
    twice as fast.

    Raises:
        rsna.data.dicom.DicomError: the file cannot be read.
        WindowError: bad options or a HU array that is not 2-D and finite.
    """
    return Preprocessor(windows=windows, size=size, curve=curve, crop=crop, reuse_buffers=False)(
        path_or_hu
    )


class Preprocessor:
    """:func:`preprocess` with fixed options and buffers reused from call to call.

    Fresh 0.5 MB arrays per slice cost a page fault per 4 kB whenever the allocator
    hands memory back to the system; reusing the file buffer and the scratch arrays
    avoids that. Not thread-safe: use one instance per thread or process.
    """

    def __init__(
        self,
        *,
        windows: Sequence[Window] = DEFAULT_WINDOWS,
        size: int = 256,
        curve: Curve = "linear",
        crop: Crop = "none",
        reuse_buffers: bool = True,
    ) -> None:
        """Args as :func:`preprocess`; `reuse_buffers=False` for a single call (no 1 MB file buffer)."""
        windows = tuple(windows)
        if not windows or not all(isinstance(w, Window) for w in windows):
            raise WindowError(
                f"`windows` must be a non-empty sequence of Window. Received: {windows!r}"
            )
        if curve not in ("linear", "sigmoid"):
            raise WindowError(f"`curve` must be 'linear' or 'sigmoid'. Received: curve={curve!r}")
        _check_size(size)
        if crop not in CROPS:
            raise WindowError(f"`crop` must be one of {CROPS}. Received: crop={crop!r}")
        self.windows, self.size, self.curve, self.crop = windows, int(size), curve, crop
        #: The head's box on the last slice; None when it kept the full field of view.
        self.last_box: Box | None = None
        # A 512x512 16-bit slice is about 0.5 MB; a single call reads into fresh memory instead.
        self._file = bytearray(1 << 20) if reuse_buffers else None
        self._scratch: dict[tuple[tuple[int, ...], np.dtype], np.ndarray] = {}

    def __repr__(self) -> str:
        names = ",".join(window_name(w) for w in self.windows)
        return (
            f"Preprocessor(windows={names}, size={self.size}, curve={self.curve!r}, "
            f"crop={self.crop!r})"
        )

    def __call__(self, path_or_hu: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
        """Uint8 (size, size, len(windows)) for one slice; see :func:`preprocess`."""
        pixels, slope, intercept = self._stored_values(path_or_hu)
        box = None
        if self.crop == "head":
            box = head_box(pixels, slope=slope, intercept=intercept)
        self.last_box = box
        square = pixels.shape[0] == pixels.shape[1]
        out = self._buffer(pixels.shape, np.dtype(np.uint8))
        channels = []
        for window in self.windows:
            if self.curve == "linear":
                clamp = self._buffer(
                    pixels.shape,
                    pixels.dtype if pixels.dtype.kind in "iu" else np.dtype(np.float32),
                )
                level = _linear_window(
                    pixels, window, slope=slope, intercept=intercept, clamp=clamp, out=out
                )
            else:
                level = _sigmoid_window(pixels, window, slope=slope, intercept=intercept)
            air = air_level(window, curve=self.curve)
            if box is not None:
                level = crop_to_box(level, box, value=air)
            resized = resize_square(level, size=self.size, pad_value=0 if square else air)
            channels.append(resized.copy() if np.shares_memory(resized, out) else resized)
        return cv2.merge(channels) if len(channels) > 1 else channels[0][..., None]

    def _buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype))
        if key not in self._scratch:
            self._scratch[key] = np.empty(shape, dtype)
        return self._scratch[key]

    def _stored_values(
        self, path_or_hu: str | os.PathLike[str] | np.ndarray
    ) -> tuple[np.ndarray, float, float]:
        if isinstance(path_or_hu, np.ndarray):
            if path_or_hu.ndim != 2 or path_or_hu.dtype.kind not in "iuf":
                raise WindowError(
                    "HU input must be a 2-D numeric array. "
                    f"Received: shape={path_or_hu.shape}, dtype={path_or_hu.dtype}"
                )
            if path_or_hu.dtype.kind == "f" and not np.isfinite(path_or_hu).all():
                raise WindowError("HU input contains NaN or infinite values.")
            return path_or_hu, 1.0, 0.0
        from rsna.data.dicom import read_image

        image = read_image(path_or_hu, buffer=self._file)
        if not image.slope > 0:
            raise WindowError(
                f"{path_or_hu}: RescaleSlope must be positive. Received: {image.slope}"
            )
        return image.pixels, image.slope, image.intercept


def air_level(window: Window, *, curve: Curve = "linear") -> int:
    """The display level of air (-1000 HU) in `window`: the padding value."""
    return int(apply_window(np.array([[AIR_HU]], np.float32), window, curve=curve)[0, 0])


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise WindowError(f"`size` must be a positive integer. Received: size={size!r}")
    if size > MAX_SIZE:
        raise WindowError(f"`size` must be at most MAX_SIZE={MAX_SIZE}. Received: size={size!r}")
