"""rsna.data.windowing: windows against closed forms, padding, order, and the preprocessor."""

from __future__ import annotations

import numpy as np
import pytest

from harness import ramp_hu, write_slice
from rsna.data.dicom import read_hu
from rsna.data.windowing import (
    BONE,
    BRAIN,
    DEFAULT_WINDOWS,
    PRESETS,
    SOFT_TISSUE,
    SUBDURAL,
    Preprocessor,
    Window,
    WindowError,
    air_level,
    apply_window,
    pad_to_square,
    parse_windows,
    preprocess,
    window_name,
)


def reference(hu: np.ndarray, window: Window) -> np.ndarray:
    """The Kaggle-style linear window in float64: clip, scale to 0-255, round half to even."""
    scaled = (hu.astype(np.float64) - window.lower) / window.width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def test_presets_are_the_published_windows():
    assert (BRAIN.center, BRAIN.width) == (40, 80)
    assert (SUBDURAL.center, SUBDURAL.width) == (80, 200)
    assert (SOFT_TISSUE.center, SOFT_TISSUE.width) == (40, 380)
    assert (BONE.center, BONE.width) == (600, 2800)
    assert (BRAIN.lower, BRAIN.upper) == (0, 80)
    assert DEFAULT_WINDOWS == (BRAIN, SUBDURAL, SOFT_TISSUE)
    assert set(PRESETS) == {"brain", "subdural", "soft", "bone"}


def test_window_rejects_bad_values():
    with pytest.raises(WindowError, match="`width` must be positive. Received: width=0"):
        Window(center=40, width=0)
    with pytest.raises(WindowError, match="finite"):
        Window(center=float("nan"), width=80)


def test_parse_windows():
    assert parse_windows("brain,subdural,soft") == DEFAULT_WINDOWS
    assert parse_windows("Brain, 600/2800") == (BRAIN, BONE)
    assert parse_windows([BRAIN, "bone"]) == (BRAIN, BONE)
    assert (
        window_name(SUBDURAL) == "subdural" and window_name(Window(center=30, width=90)) == "30/90"
    )
    with pytest.raises(WindowError, match="Unknown window 'lung'"):
        parse_windows("brain,lung")
    with pytest.raises(WindowError, match="center/width"):
        parse_windows("40/abc")
    with pytest.raises(WindowError, match="at least one"):
        parse_windows([])


def test_linear_window_closed_form():
    hu = np.array([[-1000, 0, 20, 40, 60, 80, 1000]], np.float32)
    np.testing.assert_array_equal(apply_window(hu, BRAIN), [[0, 0, 64, 128, 191, 255, 255]])
    # Subdural 80/200: lower edge -20 HU.
    np.testing.assert_array_equal(apply_window(hu, SUBDURAL), [[0, 26, 51, 76, 102, 128, 255]])


@pytest.mark.parametrize("window", [*PRESETS.values(), Window(center=35.5, width=81)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_window_folds_slope_and_intercept_for_every_dtype(window, dtype):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4000, size=(32, 32)).astype(dtype)
    hu = stored.astype(np.float64) - 1024.0
    out = apply_window(stored, window, slope=1.0, intercept=-1024.0)
    assert out.dtype == np.uint8 and out.shape == stored.shape
    diff = np.abs(out.astype(int) - reference(hu, window).astype(int))
    assert diff.max() <= 1  # float32 rounding at exact .5 boundaries
    assert (diff > 0).mean() < 0.01


def test_window_with_slope():
    stored = np.array([[0, 10, 20, 40]], np.int16)
    # HU = 2 * stored - 20: -20, 0, 20, 60 in the brain window.
    np.testing.assert_array_equal(
        apply_window(stored, BRAIN, slope=2.0, intercept=-20.0), [[0, 0, 64, 191]]
    )
    with pytest.raises(WindowError, match="`slope` must be positive. Received: slope=0"):
        apply_window(stored, BRAIN, slope=0.0)


def test_sigmoid_window():
    hu = np.array([[-1000, 0, 40, 80, 1000]], np.float32)
    out = apply_window(hu, BRAIN, curve="sigmoid")
    np.testing.assert_array_equal(out, [[0, 1, 128, 254, 255]])  # edges map to 1 and 254
    ramp = apply_window(np.linspace(-50, 130, 200, dtype=np.float32)[None], BRAIN, curve="sigmoid")
    assert np.all(np.diff(ramp.astype(int)) >= 0)
    with pytest.raises(WindowError, match="`curve` must be 'linear' or 'sigmoid'"):
        apply_window(hu, BRAIN, curve="cubic")


def test_preprocess_constant_image_closed_form():
    hu = np.full((64, 64), 30.0, np.float32)
    out = preprocess(hu, size=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    # brain 30/80*255 = 95.6, subdural 50/200*255 = 63.75, soft 180/380*255 = 120.8
    np.testing.assert_array_equal(out[0, 0], [96, 64, 121])
    assert (out == out[0, 0]).all()


def test_non_square_is_padded_with_air_then_resized():
    hu = np.full((32, 64), 40.0, np.float32)  # wider than tall
    out = preprocess(hu, windows=[BRAIN, BONE], size=32)
    brain, bone = out[..., 0], out[..., 1]
    assert (brain[:8] == 0).all() and (brain[24:] == 0).all()  # 16 rows of air above and below
    assert (brain[8:24] == 128).all()
    assert (bone[:8] == 0).all() and (bone[8:24] == 76).all()  # (40 + 800) / 2800 * 255 = 76.5
    assert air_level(BONE) == 0 and air_level(Window(center=-1000, width=400)) == 128
    tall = preprocess(hu.T.copy(), windows=[BRAIN], size=32)[..., 0]
    np.testing.assert_array_equal(tall, brain.T)


def test_pad_to_square_centres_the_image():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3) + 1
    padded = pad_to_square(image, value=9)
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, 5, 6], [9, 9, 9]])
    assert pad_to_square(padded) is padded


def test_windows_are_applied_before_resizing():
    # One bone pixel beside three brain pixels: averaging HU first would give 265 HU,
    # white in the brain window; windowing first averages 255 and 3 x 128.
    hu = np.full((2, 2), 40.0, np.float32)
    hu[0, 0] = 1000.0
    out = preprocess(hu, windows=[BRAIN], size=1)
    assert out[0, 0, 0] == 160  # (255 + 3 * 128) / 4 = 159.75


def test_preprocess_path_equals_preprocess_of_its_hu(tmp_path):
    hu = ramp_hu(40, 56, low=-1000, high=3000)
    for group, bad in (("s16", False), ("s12", False), ("u12", False), ("u12", True)):
        path = write_slice(tmp_path / f"{group}{bad}.dcm", hu, group=group, bad_intercept=bad)
        np.testing.assert_array_equal(preprocess(path, size=24), preprocess(read_hu(path), size=24))


def test_preprocessor_reuses_buffers_without_aliasing(tmp_path):
    a = write_slice(tmp_path / "a.dcm", ramp_hu(32, 32, low=-200, high=200))
    b = write_slice(tmp_path / "b.dcm", ramp_hu(32, 32, low=100, high=900))
    pre = Preprocessor(size=32)  # no resize: the scratch must not leak into results
    first = pre(a)
    kept = first.copy()
    second = pre(b)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(first, preprocess(a, size=32))
    np.testing.assert_array_equal(second, preprocess(b, size=32))
    assert not np.array_equal(first, second)
    assert "brain,subdural,soft" in repr(pre)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "`size` must be a positive integer. Received: size=0"),
        ({"size": 2.5}, "`size` must be a positive integer"),
        ({"windows": []}, "`windows` must be a non-empty sequence of Window"),
        ({"windows": [(40, 80)]}, "`windows` must be a non-empty sequence of Window"),
        ({"curve": "gamma"}, "`curve` must be 'linear' or 'sigmoid'"),
    ],
)
def test_preprocess_rejects_bad_options(kwargs, message):
    with pytest.raises(WindowError, match=message):
        preprocess(np.zeros((4, 4), np.float32), **kwargs)


def test_preprocess_rejects_bad_arrays():
    with pytest.raises(WindowError, match="2-D numeric array. Received: shape=\\(2, 2, 2\\)"):
        preprocess(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(WindowError, match="NaN"):
        preprocess(np.full((2, 2), np.nan, np.float32))
