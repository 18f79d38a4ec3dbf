"""Stage 2's series inputs: geometry, deltas, distortion and reversal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness import fuzz_settings
from rsna.data.series import (
    GEOMETRY,
    MAX_GAP_RATIO,
    SeriesError,
    build_series,
    distort,
    geometry,
    reversed_series,
    stack_channels,
    study_epoch_size,
    study_sample,
)


def test_geometry_of_a_series_with_one_missing_slice():
    z = np.array([0.0, 5.0, 10.0, 20.0, 25.0])  # the slice at 15 mm is missing
    got = geometry(z)
    np.testing.assert_allclose(got[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(got[:, 1], [0, 1, 1, 2, 1])  # gap to the previous slice
    np.testing.assert_allclose(got[:, 2], [1, 1, 2, 1, 0])  # gap to the next slice


@pytest.mark.parametrize(
    "z, expected",
    [
        ([7.0], [[0, 0, 0]]),  # one slice: no neighbours
        ([3.0, 3.0, 3.0], [[0, 0, 0], [0.5, 0, 0], [1, 0, 0]]),  # no spacing at all
        ([0.0, np.nan, 10.0], [[0, 0, 0], [0.5, 0, 0], [1, 0, 0]]),  # z missing: no gaps
        (
            [0.0, 1.0, 2.0, 1000.0],
            [[0, 0, 1], [1 / 3, 1, 1], [2 / 3, 1, MAX_GAP_RATIO], [1, MAX_GAP_RATIO, 0]],
        ),
    ],
)
def test_geometry_survives_degenerate_series(z, expected):
    np.testing.assert_allclose(geometry(np.array(z)), expected, atol=1e-6)


def _metadata(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"ID_{k}" for k in range(n)]
    meta = pd.DataFrame(
        {"series_uid": "s", "slice_index": np.arange(n)[::-1], "z": 5.0 * np.arange(n)[::-1]},
        index=ids,
    )
    frame = pd.DataFrame(
        {"a": np.arange(n, dtype=float) ** 2, "b": -np.arange(n, dtype=float)}, index=ids
    )
    return frame, meta


def test_build_series_appends_geometry_after_the_deltas():
    frame, meta = _metadata(4)
    ((ids, values),) = build_series(frame, meta, position=True).values()
    assert ids == ["ID_3", "ID_2", "ID_1", "ID_0"]  # by slice_index, not by file order
    assert values.shape == (4, 3 * 2 + len(GEOMETRY))
    np.testing.assert_allclose(values[:, :2], frame.loc[ids].to_numpy())
    np.testing.assert_allclose(values[1:, 2:4], values[1:, :2] - values[:-1, :2])
    np.testing.assert_allclose(values[:-1, 4:6], values[:-1, :2] - values[1:, :2])
    np.testing.assert_allclose(values[:, 6:], geometry(np.arange(4) * 5.0))
    ((_, plain),) = build_series(frame, meta).values()
    np.testing.assert_array_equal(plain, values[:, :6])


series_values = st.integers(1, 3).flatmap(
    lambda d: st.tuples(
        st.just(d),
        arrays(
            np.float32,
            st.tuples(st.integers(1, 9), st.just(3 * d + len(GEOMETRY))),
            elements=st.floats(-10, 10, width=32),
        ),
    )
)


@settings(max_examples=60, deadline=None)
@given(series_values)
def test_reversing_twice_is_the_identity_and_swaps_gaps(case):
    d, values = case
    back = reversed_series(values, position=True)
    np.testing.assert_array_equal(reversed_series(back, position=True), values)
    np.testing.assert_array_equal(back[:, 0], values[::-1, 0])
    np.testing.assert_array_equal(back[:, d : 2 * d], values[::-1, 2 * d : 3 * d])
    np.testing.assert_array_equal(back[:, -3], values[::-1, -3])  # a slice keeps its position
    np.testing.assert_array_equal(back[:, -2], values[::-1, -1])
    np.testing.assert_array_equal(back[:, -1], values[::-1, -2])


@settings(max_examples=60, deadline=None)
@given(series_values, st.integers(0, 2**32 - 1))
def test_distortion_leaves_geometry_alone_and_scales_deltas_only(case, seed):
    d, values = case
    out = distort(values, np.random.default_rng(seed), 0.3, position=True)
    np.testing.assert_array_equal(out[:, -3:], values[:, -3:])
    scale = out[:, d : 2 * d] / np.where(values[:, d : 2 * d] == 0, 1, values[:, d : 2 * d])
    nonzero = values[:, d : 2 * d] != 0
    assert np.all((scale[nonzero] > 0.69) & (scale[nonzero] < 1.31))
    same = distort(values, np.random.default_rng(seed), 0.3, position=True)
    np.testing.assert_array_equal(out, same)  # the generator decides everything


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    channels=st.lists(st.integers(1, 4), min_size=1, max_size=7),
    seed=st.integers(0, 2**16),
)
def test_stack_channels_equals_numpys_concatenate(rows, cols, channels, seed):
    rng = np.random.default_rng(seed)
    slices = [rng.integers(0, 256, (rows, cols, c), dtype=np.uint8) for c in channels]
    out = np.full((rows, cols, sum(channels)), 7, np.uint8)
    assert stack_channels(slices, out=out) is out
    np.testing.assert_array_equal(out, np.concatenate(slices, axis=2))


def test_stack_channels_into_a_strided_view_and_bad_shapes():
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 256, (5, 6, 3), dtype=np.uint8) for _ in range(3)]
    batch = np.zeros((2, 5, 6, 12), np.uint8)
    view = batch[0, :, :, :9]  # not C-contiguous: the NumPy path
    stack_channels(slices, out=view)
    np.testing.assert_array_equal(view, np.concatenate(slices, axis=2))
    assert not batch[..., 9:].any() and not batch[1].any()
    with pytest.raises(SeriesError, match=r"do not stack into \(5, 6, 8\)"):
        stack_channels(slices, out=np.empty((5, 6, 8), np.uint8))
    with pytest.raises(SeriesError, match="do not stack"):
        stack_channels([slices[0], slices[1][:4]], out=np.empty((5, 6, 6), np.uint8))


def _study_slices(lengths: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{uid}_{k}", uid, k) for uid, n in lengths.items() for k in range(n)]
    rows += [("alone", "", -1)]
    frame = pd.DataFrame(rows, columns=["image_id", "series_uid", "slice_index"])
    return frame.set_index("image_id").sample(frac=1.0, random_state=1)  # any row order


@fuzz_settings(60)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    per_study=st.integers(1, 6),
    centre=st.floats(0, 5),
    epoch=st.integers(0, 1000),
)
def test_study_sampling_draws_per_study_slices_of_each_series(lengths, per_study, centre, epoch):
    slices = _study_slices({f"s{i}": n for i, n in enumerate(lengths)})
    ids = list(slices.index)
    rows = study_sample(slices, ids, per_study=per_study, centre=centre, seed=3, epoch=epoch)
    assert (np.diff(rows) > 0).all()  # sorted, no image twice
    drawn = slices.iloc[rows]
    counts = drawn[drawn["series_uid"] != ""].groupby("series_uid").size()
    for i, n in enumerate(lengths):
        assert counts.get(f"s{i}", 0) == min(n, per_study)
    assert "alone" in drawn.index  # an image without a series is always drawn
    assert len(rows) == study_epoch_size(slices, ids, per_study=per_study)
    again = study_sample(slices, ids, per_study=per_study, centre=centre, seed=3, epoch=epoch)
    np.testing.assert_array_equal(rows, again)


def test_study_sampling_weighs_the_middle_by_the_closed_form():
    """One slice a series: P(slice) = w / sum(w) with w = 1 + c (1 - |2p - 1|)."""
    slices = _study_slices({"s": 5})
    ids = list(slices.index)
    counts = pd.Series(0, index=ids)
    for epoch in range(6000):
        rows = study_sample(slices, ids, per_study=1, centre=2.0, seed=0, epoch=epoch)
        counts.iloc[rows] += 1
    w = 1 + 2.0 * (1 - np.abs(2 * np.arange(5) / 4 - 1))  # 1, 2, 3, 2, 1
    expected = 6000 * w / w.sum()
    got = counts[[f"s_{k}" for k in range(5)]].to_numpy()
    assert (np.abs(got - expected) < 4 * np.sqrt(expected)).all(), got  # 4 binomial sd
    assert counts["alone"] == 6000
    first = study_sample(slices, ids, per_study=2, centre=0.0, seed=0, epoch=0)
    assert any(
        not np.array_equal(first, study_sample(slices, ids, per_study=2, centre=0.0, seed=0, epoch=e))
        for e in range(1, 5)
    )  # a new draw each epoch


@pytest.mark.parametrize(
    "options, message",
    [
        ({"per_study": 0, "centre": 1.0}, "`per_study` must be a positive integer"),
        ({"per_study": 2, "centre": -1.0}, "`centre` must be >= 0"),
        ({"per_study": 2, "centre": float("inf")}, "`centre` must be >= 0 and finite"),
    ],
)
def test_bad_study_sampling_is_refused(options, message):
    slices = _study_slices({"s": 3})
    with pytest.raises(SeriesError, match=message):
        study_sample(slices, list(slices.index), seed=0, epoch=0, **options)
