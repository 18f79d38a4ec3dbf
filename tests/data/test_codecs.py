"""rsna.data.codecs: every codec round-trips within its promise, and refuses what is not
its own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rsna.data.codecs import COMPRESSIONS, Codec, CodecError, codec_for


def smooth(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """An image like a windowed slice: smooth shapes, a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    base = 128 + 100 * np.sin(6 * x) * np.cos(4 * y)
    return np.clip(base[..., None] + rng.normal(0, 3, (size, size, channels)), 0, 255).astype(
        np.uint8
    )


@pytest.mark.parametrize("channels", [1, 2, 3, 9])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trips(compression, channels):
    codec = codec_for(compression)
    image = smooth(64, channels)
    out = np.empty_like(image)
    codec.decode_into(codec.encode(image), out)
    error = np.abs(out.astype(int) - image).mean()
    assert error == 0 if codec.lossless else 0 < error < 3


@settings(max_examples=50, deadline=None, derandomize=True)
@given(arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24), st.sampled_from([1, 3]))))
def test_lossless_codecs_return_any_image_exactly(image):
    for codec in (codec_for("none"), codec_for("lossless")):
        out = np.empty_like(image)
        codec.decode_into(codec.encode(image), out)
        np.testing.assert_array_equal(out, image)


def test_bytes_that_are_not_an_image_of_the_shape_are_refused():
    out = np.empty((8, 8, 3), np.uint8)
    for compression in COMPRESSIONS:
        codec = codec_for(compression)
        with pytest.raises(CodecError):
            codec.decode_into(b"\x00" * 7, out)
        with pytest.raises(CodecError):
            codec.decode_into(codec.encode(smooth(8, 1)), out)  # one channel, not three


def test_codec_choices_and_their_record():
    assert codec_for("lossy").level == 95 and codec_for("lossy", quality=80).tag == "lossy80"
    assert (codec_for("none").tag, codec_for("lossless").tag) == ("none", "lossless")
    with pytest.raises(
        CodecError, match="`compression` must be one of .* Received: compression='gzip'"
    ):
        codec_for("gzip")
    with pytest.raises(CodecError, match="`quality` must be in 1..100. Received: quality=0"):
        codec_for("lossy", quality=0)
    stored = codec_for("lossless").to_json()
    assert stored["lossless"] and stored["library"].startswith("zstandard")
    assert Codec.from_json(stored) == codec_for("lossless")
    with pytest.raises(CodecError, match="format version 7; this rsna reads version 1"):
        Codec.from_json({**stored, "version": 7})
