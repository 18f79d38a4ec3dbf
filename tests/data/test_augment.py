"""rsna.data.augment: the affine warp in closed form, and its seeded draws."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rsna.data.augment import (
    Augment,
    AugmentError,
    apply_affine,
    augment,
    is_identity,
    random_affine,
    reverse_slices,
)


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


STILL = Augment(flip=False, shift=0, scale=0, rotate=0)


def test_vertical_flip_is_a_closed_form_and_off_by_default():
    image = np.zeros((9, 9, 1), np.uint8)
    image[1, 4] = 7
    drawn = [
        augment(image, np.random.default_rng(s), replace(STILL, vflip=True)) for s in range(20)
    ]
    flipped = [d[7, 4, 0] == 7 and d.sum() == 7 for d in drawn]
    assert all(f or np.array_equal(d, image) for f, d in zip(flipped, drawn, strict=True))
    assert 3 <= sum(flipped) <= 17
    assert not Augment().vflip


def test_a_random_resized_crop_maps_its_box_onto_the_whole_image():
    size = 64
    config = replace(STILL, crop_area=(0.25, 0.25), crop_ratio=(1.0, 1.0))
    matrix = random_affine(np.random.default_rng(3), size=size, config=config)
    # A quarter of the area, square: a 32x32 box zoomed 2x, wholly inside the image.
    np.testing.assert_allclose(matrix[:, :2], 2 * np.eye(2), atol=1e-6)
    left, top = -matrix[0, 2] / 2, -matrix[1, 2] / 2
    assert 0 <= left <= size - 32 and 0 <= top <= size - 32
    ramp = np.tile(np.arange(size, dtype=np.uint8)[None, :, None], (size, 1, 1))
    out = augment(ramp, np.random.default_rng(3), config)
    # Nearest sampling of a 2x zoom: the box's 32 source columns (33 when its edge falls
    # between pixels), each about twice, in order.
    columns = out[0, :, 0].astype(int)
    assert 32 <= np.unique(columns).size <= 33 and (np.diff(columns) >= 0).all()
    assert abs(columns[0] - left) <= 1 and abs(columns[-1] - (left + 31)) <= 1
    with pytest.raises(AugmentError, match="`crop_area` must be two numbers"):
        Augment(crop_area=(0.0, 1.0))
    with pytest.raises(AugmentError, match="`crop_ratio` must be two numbers"):
        Augment(crop_ratio=(2.0, 1.0))


def test_level_jitter_is_one_table_per_window_shared_by_context_slices():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (8, 8, 6), dtype=np.uint8)  # 3 windows x 2 slices
    out = augment(
        image, np.random.default_rng(1), replace(STILL, brightness=0.2, contrast=0.3), windows=3
    )
    for w in range(3):
        # The same level maps to the same output in both slices of a window.
        mapping = {}
        for c in (w, w + 3):
            for a, b in zip(image[..., c].ravel(), out[..., c].ravel(), strict=True):
                assert mapping.setdefault(int(a), int(b)) == int(b)
    assert not np.array_equal(out, image)
    only_brightness = augment(
        np.full((4, 4, 1), 100, np.uint8), np.random.default_rng(2), replace(STILL, brightness=0.1)
    )
    shift = int(only_brightness[0, 0, 0]) - 100
    assert only_brightness.std() == 0 and 0 < abs(shift) <= 26


def test_erasing_sets_rectangles_to_air_on_every_channel():
    image = np.full((32, 32, 3), 200, np.uint8)
    config = replace(STILL, erase=1.0, erase_holes=3, erase_size=0.25)
    out = augment(image, np.random.default_rng(4), config)
    erased = out[..., 0] == 0
    assert erased.any() and (out[erased] == 0).all() and (out[~erased] == 200).all()
    assert erased.sum() <= 3 * 8 * 8  # at most 3 holes of at most 8x8
    assert np.array_equal(
        augment(image, np.random.default_rng(4), replace(config, erase=0.0)), image
    )


def test_options_that_are_off_draw_nothing_so_old_seeds_give_old_images():
    image = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    base = Augment()  # the demo's kind of warp
    explicit_off = replace(base, vflip=False, crop_area=(1.0, 1.0), erase=0.0, brightness=0.0)
    for seed in range(5):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(
            augment(image, rng_a, base), augment(image, rng_b, explicit_off)
        )
        assert rng_a.random() == rng_b.random()  # the same number of draws


def test_reverse_slices_reverses_whole_slices_and_keeps_each_slices_windows():
    image = np.broadcast_to(np.arange(9, dtype=np.uint8), (4, 4, 9)).copy()
    out = reverse_slices(image, windows=3)
    assert out[0, 0].tolist() == [6, 7, 8, 3, 4, 5, 0, 1, 2]
    np.testing.assert_array_equal(reverse_slices(out, windows=3), image)
    np.testing.assert_array_equal(reverse_slices(image, windows=9), image)  # one slice


def test_zflip_reverses_the_slices_after_the_same_warp():
    """Turning zflip on changes nothing else the seed drew: its draw comes last."""
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 9), dtype=np.uint8)
    warp = Augment(erase=0.5, brightness=0.1)
    for seed in range(6):
        plain = augment(image, np.random.default_rng(seed), warp, windows=3)
        on = replace(warp, zflip=1.0)
        flipped = augment(image, np.random.default_rng(seed), on, windows=3)
        np.testing.assert_array_equal(flipped, reverse_slices(plain, windows=3))
    still = Augment(flip=False, shift=0, scale=0, rotate=0, zflip=1.0)
    assert not is_identity(still)
    np.testing.assert_array_equal(
        augment(image, np.random.default_rng(0), still, windows=3), reverse_slices(image, windows=3)
    )
    with pytest.raises(AugmentError, match="`zflip` must be in \\[0, 1\\]"):
        Augment(zflip=1.5)
