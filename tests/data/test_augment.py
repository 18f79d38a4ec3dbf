"""rsna.data.augment: the affine warp in closed form, and its seeded draws."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rsna.data.augment import Augment, AugmentError, apply_affine, augment, random_affine


def test_augment_closed_forms():
    image = np.zeros((9, 9, 2), np.uint8)
    image[4, 1] = [10, 20]
    mirror = np.array([[-1, 0, 8], [0, 1, 0]], np.float32)
    flipped = apply_affine(image, mirror)
    assert flipped[4, 7].tolist() == [10, 20] and flipped.sum() == 30
    identity = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    flip_only = Augment(flip=True, shift=0, scale=0, rotate=0)
    drawn = [random_affine(np.random.default_rng(s), size=9, config=flip_only) for s in range(20)]
    flips = [np.allclose(m, mirror, atol=1e-6) for m in drawn]
    assert all(f or np.allclose(m, identity, atol=1e-6) for f, m in zip(flips, drawn, strict=True))
    assert 3 <= sum(flips) <= 17  # about half
    shifted = random_affine(
        np.random.default_rng(0), size=100, config=Augment(flip=False, shift=0.1, scale=0, rotate=0)
    )
    assert np.allclose(shifted[:, :2], np.eye(2)) and np.all(np.abs(shifted[:, 2]) <= 10)
    with pytest.raises(
        AugmentError, match="`rotate` must be in \\[0, 180\\]. Received: rotate=200"
    ):
        Augment(rotate=200)


def test_nearest_keeps_pixel_statistics_that_linear_smooths_away():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    half_pixel = np.array([[1, 0, 0.5], [0, 1, 0.5]], np.float32)
    inner = (slice(2, -2), slice(2, -2))
    nearest = apply_affine(noise, half_pixel)[inner]
    linear = apply_affine(noise, half_pixel, interpolation="linear")[inner]
    assert set(np.unique(nearest)) <= set(np.unique(noise))
    # nearest copies pixels; linear averages 4 independent ones, a quarter of the variance
    assert nearest.var() == pytest.approx(noise.var(), rel=0.05)
    assert linear.var() == pytest.approx(noise.var() / 4, rel=0.1)


def test_interpolation_is_checked_and_reaches_the_warp():
    with pytest.raises(
        AugmentError, match="`interpolation` must be one of .* Received: interpolation='area'"
    ):
        Augment(interpolation="area")
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 1)).astype(np.uint8)
    rotate = Augment(flip=False, shift=0, scale=0, rotate=20)
    seeded = [
        augment(image, np.random.default_rng(3), replace(rotate, interpolation=name))
        for name in ("nearest", "linear")
    ]
    assert set(np.unique(seeded[0])) <= set(np.unique(image)) | {0}
    assert not np.array_equal(seeded[0], seeded[1])
