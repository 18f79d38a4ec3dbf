"""rsna.data.crop and the head crop of the preprocessor and the store: a phantom with a
known head box, the largest component, the fallback, and the crop's geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import TINY_CODEC, TINY_SPEC
from rsna.data.cache import ImageCache, build_cache
from rsna.data.crop import (
    Box,
    CropError,
    crop_to_box,
    head_box,
    head_mask,
    largest_component,
)
from rsna.data.metadata import data_dir, read_metadata
from rsna.data.sources import ImageSpec
from rsna.data.windowing import BRAIN, Preprocessor, WindowError, air_level, preprocess


def phantom(*, shape=(200, 200), head=(30, 50, 60, 80), table: bool = True) -> np.ndarray:
    """Air with a rectangular 'head' (top, left, height, width) of 40 HU, and a thin
    'table' of 300 HU along the bottom."""
    hu = np.full(shape, -1000.0, np.float32)
    top, left, height, width = head
    hu[top : top + height, left : left + width] = 40.0
    if table:
        hu[shape[0] - 8 : shape[0] - 5, 10 : shape[1] - 10] = 300.0
    return hu


def test_the_head_box_of_a_phantom_is_its_square_with_the_margin():
    hu = phantom()
    assert largest_component(head_mask(hu)) == (30, 50, 60, 80, 60 * 80)
    # The 60x80 head becomes an 80x80 square around its centre...
    assert head_box(hu, margin=0.0) == Box(top=20, left=50, side=80)
    # ...and a 5% margin adds 4 pixels on each side.
    assert head_box(hu, margin=0.05) == Box(top=16, left=46, side=88)


def test_the_threshold_applies_in_stored_units_as_in_hu():
    stored = np.array([[0, 799, 800, 801, 2000]], np.uint16)
    # HU = stored - 1024 (DICOM (0028,1052) RescaleIntercept): -200 HU is stored 824.
    np.testing.assert_array_equal(head_mask(stored, intercept=-1024.0), [[0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(
        head_mask(stored, slope=0.25, intercept=0.0, threshold=200.0), [[0, 0, 0, 1, 1]]
    )
    with pytest.raises(CropError, match="`slope` must be positive. Received: slope=0"):
        head_mask(stored, slope=0)


def test_no_head_gives_none():
    assert head_box(np.full((64, 64), -1000.0)) is None
    speck = np.full((100, 100), -1000.0)
    speck[50, 50] = 60.0  # one pixel is noise, not a head (below 1% of the slice)
    assert head_box(speck) is None
    with pytest.raises(CropError, match="`margin` must be in"):
        head_box(phantom(), margin=-0.1)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(4, 40),
    cols=st.integers(4, 40),
    top=st.integers(-30, 40),
    left=st.integers(-30, 40),
    side=st.integers(1, 60),
)
def test_crop_to_box_keeps_the_pixels_inside_and_pads_the_rest(rows, cols, top, left, side):
    image = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) + 1
    out = crop_to_box(image, Box(top=top, left=left, side=side), value=-5)
    assert out.shape == (side, side)
    r, c = np.meshgrid(np.arange(side) + top, np.arange(side) + left, indexing="ij")
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    np.testing.assert_array_equal(out[inside], image[r[inside], c[inside]])
    assert (out[~inside] == -5).all()


def test_the_preprocessor_crops_to_the_head_and_counts_on_the_last_box():
    hu = phantom(shape=(256, 200), head=(40, 40, 100, 90))
    crop = Preprocessor(windows=(BRAIN,), size=64, crop="head")
    image = crop(hu)
    assert crop.last_box == head_box(hu)
    full = preprocess(hu, windows=(BRAIN,), size=64)
    head_level = preprocess(np.full((4, 4), 40.0), windows=(BRAIN,), size=4)[0, 0, 0]
    # The head covers far more of the cropped image than of the full one.
    assert (image == head_level).mean() > 2 * (full == head_level).mean()
    # The whole head is inside: its level reaches no edge but the margin's air.
    assert image[0].max() < head_level and image[:, 0].max() < head_level
    air = Preprocessor(windows=(BRAIN,), size=64, crop="head")
    empty = np.full((256, 200), -1000.0, np.float32)
    np.testing.assert_array_equal(air(empty), preprocess(empty, windows=(BRAIN,), size=64))
    assert air.last_box is None
    assert (air(empty) == air_level(BRAIN)).all()
    with pytest.raises(WindowError, match="`crop` must be one of"):
        Preprocessor(crop="brain")


def test_the_spec_records_the_crop_and_old_stores_read_as_uncropped():
    spec = ImageSpec(size=32, crop="head")
    assert spec.name.endswith("_head") and "crop=head" in spec.describe()
    assert ImageSpec.from_json(spec.to_json()) == spec
    old = {k: v for k, v in spec.to_json().items() if k != "crop"}
    assert ImageSpec.from_json(old).crop == "none"


def test_a_head_cropped_store_holds_what_preprocess_gives(tiny_work, tmp_path):
    spec = ImageSpec(size=TINY_SPEC.size, windows=TINY_SPEC.windows, crop="head")
    result = build_cache(tiny_work, spec, codec=TINY_CODEC, out=tmp_path / "c", workers=1)
    assert result.full_view == ()  # every synthetic slice shows a head
    cache = ImageCache(tmp_path / "c", expect=spec)
    meta = read_metadata(tiny_work)
    base = data_dir(tiny_work)
    for image_id in meta.index[meta["readable"]][:10]:
        expected = preprocess(base / meta.at[image_id, "file"], size=spec.size, crop="head")
        np.testing.assert_array_equal(cache.read(image_id), expected)
        assert not np.array_equal(
            expected, preprocess(base / meta.at[image_id, "file"], size=spec.size)
        )
