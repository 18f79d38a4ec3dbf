"""rsna.data.views: each test-time view against its NumPy transform or a closed form, the
seeded crops, and the ``predict.tta`` parser."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import fuzz_settings
from rsna.data.views import (
    CROP_FRACTION,
    View,
    ViewError,
    apply_view,
    crop_box,
    expand_views,
)


def _batch(n: int = 3, size: int = 32, channels: int = 9) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize(
    "name, transform",
    [
        ("none", lambda x: x),
        ("hflip", lambda x: x[:, :, ::-1]),
        ("vflip", lambda x: x[:, ::-1]),
        ("transpose", lambda x: np.swapaxes(x, 1, 2)),
    ],
)
def test_the_fixed_views_are_their_numpy_transforms(name, transform):
    x = _batch()
    np.testing.assert_array_equal(apply_view(x, View(name)), transform(x))


def test_transpose_twice_and_flip_twice_give_the_slice_back():
    x = _batch()
    for name in ("hflip", "vflip", "transpose"):
        np.testing.assert_array_equal(apply_view(apply_view(x, View(name)), View(name)), x)


def test_the_centre_crop_of_a_ramp_is_the_ramp_resampled_by_the_closed_form():
    """A linear ramp stays linear under bilinear resizing: column j of the output samples
    the crop at ``(j + 0.5) * width / cols - 0.5`` (half-pixel centres, as cv2 does)."""
    size = 64
    ramp = np.tile(np.arange(size, dtype=np.float64) * 3, (size, 1))  # 0..189 along columns
    x = np.repeat(ramp.astype(np.uint8)[None, :, :, None], 2, axis=3)[None].reshape(1, size, size, 2)
    top, left, height, width, flip = crop_box(View("centre_crop"), rows=size, cols=size, seed=0)
    assert (height, width, flip) == (round(size * CROP_FRACTION),) * 2 + (False,)
    assert top == left == (size - height) // 2
    got = apply_view(x, View("centre_crop"))
    source = np.clip((np.arange(size) + 0.5) * width / size - 0.5, 0, width - 1)
    expected = 3 * (left + source)
    np.testing.assert_allclose(got[0, 10, :, 0], expected, atol=1.0)  # uint8 rounding
    np.testing.assert_array_equal(got[..., 0], got[..., 1])  # every channel alike


def test_random_crops_are_seeded_inside_the_slice_and_differ_by_index():
    boxes = [crop_box(View("random_crop", k), rows=32, cols=32, seed=5) for k in range(10)]
    assert boxes == [crop_box(View("random_crop", k), rows=32, cols=32, seed=5) for k in range(10)]
    assert len(set(boxes)) > 5
    assert {flip for *_, flip in boxes} == {True, False}
    for top, left, height, width, _ in boxes:
        assert 0 <= top <= 32 - height and 0 <= left <= 32 - width and height == 28
    assert boxes != [crop_box(View("random_crop", k), rows=32, cols=32, seed=6) for k in range(10)]


def test_a_random_crop_is_the_flipped_crop_resized():
    import cv2

    x = _batch(channels=3)
    for k in range(4):
        view = View("random_crop", k)
        top, left, height, width, flip = crop_box(view, rows=32, cols=32, seed=1)
        got = apply_view(x, view, seed=1)
        for i in range(len(x)):
            crop = x[i, top : top + height, left : left + width]
            crop = crop[:, ::-1] if flip else crop
            want = cv2.resize(np.ascontiguousarray(crop), (32, 32), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(got[i], want)
        assert got.shape == x.shape and got.dtype == np.uint8


def test_expand_views_reads_names_and_random_crops():
    views = expand_views(["none", "hflip", "random_crop:3", "centre_crop"])
    assert [v.label for v in views] == [
        "none",
        "hflip",
        "random_crop#0",
        "random_crop#1",
        "random_crop#2",
        "centre_crop",
    ]


@pytest.mark.parametrize(
    "tta, message",
    [
        (["diagonal"], "entries must be one of"),
        (["random_crop:0"], "N in \\[1, 64\\]"),
        (["random_crop:65"], "N in \\[1, 64\\]"),
        (["random_crop"], "entries must be one of"),
        (["hflip:2"], "entries must be one of"),
        ([], "at least one view"),
        (["random_crop:2", "random_crop:1"], "names a view twice"),
    ],
)
def test_bad_tta_entries_are_refused_by_name(tta, message):
    with pytest.raises(ViewError, match=message):
        expand_views(tta)


@fuzz_settings(200)
@given(st.lists(st.text(alphabet="abcdefhilmnoprstuvx_:0123456789", max_size=16), max_size=4))
def test_the_tta_parser_accepts_or_refuses_never_crashes(tta):
    try:
        views = expand_views(tta)
    except ViewError:
        return
    assert views and len(set(views)) == len(views)
    x = _batch(n=1, size=8, channels=1)
    for view in views:
        assert apply_view(x, view).shape == x.shape
