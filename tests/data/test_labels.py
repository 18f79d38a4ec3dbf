"""rsna.data.labels: the long <-> wide round trip, duplicates, and every malformed input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsna.data.labels import (
    LABELS,
    LabelError,
    check_image_id,
    image_path,
    prior,
    read_labels,
    to_long,
)
from rsna.errors import DataWarning


def _wide(n: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subtypes = rng.integers(0, 2, size=(n, 5))
    values = np.column_stack([subtypes, subtypes.max(axis=1)]).astype(np.int8)
    index = pd.Index([f"ID_{i:09x}" for i in rng.choice(16**6, n, replace=False)], name="image_id")
    return pd.DataFrame(values, index=index, columns=list(LABELS)).sort_index()


def _write(tmp_path, text: str):
    path = tmp_path / "train.csv"
    path.write_text(text)
    return path


def test_round_trip(tmp_path):
    wide = _wide(20)
    path = tmp_path / "train.csv"
    to_long(wide).to_csv(path, index=False)
    back = read_labels(path)
    pd.testing.assert_frame_equal(back, wide)
    assert list(back.columns) == list(LABELS) and back.index.name == "image_id"
    assert all(back.dtypes == np.int8)
    assert back.attrs["duplicate_rows_dropped"] == 0


def test_to_long_rows_follow_kaggle_order():
    wide = _wide(2)
    long = to_long(wide)
    first = wide.index[0]
    assert list(long["ID"][:6]) == [f"{first}_{c}" for c in LABELS]
    assert list(long.columns) == ["ID", "Label"] and len(long) == 12
    np.testing.assert_array_equal(long["Label"][:6], wide.iloc[0].to_numpy())


def test_to_long_carries_probabilities():
    probs = pd.DataFrame([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], index=["ID_ab"], columns=list(LABELS))
    assert to_long(probs)["Label"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    with pytest.raises(LabelError, match=r"missing label column\(s\) \['any'\]"):
        to_long(probs.drop(columns="any"))
    with pytest.raises(LabelError, match="Received: 'ID_ZZ'"):
        to_long(probs.rename(index={"ID_ab": "ID_ZZ"}))


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    wide = _wide(4)
    long = to_long(wide)
    repeated = pd.concat([long, long.iloc[6:12], long.iloc[:6]], ignore_index=True)
    path = tmp_path / "train.csv"
    repeated.to_csv(path, index=False)
    with pytest.warns(DataWarning, match="dropped 12 duplicated rows of 2 images"):
        back = read_labels(path)
    pd.testing.assert_frame_equal(back, wide)
    assert back.attrs["duplicate_rows_dropped"] == 12
    assert back.attrs["duplicate_images"] == sorted(wide.index[:2])


def test_conflicting_duplicates_name_the_lines(tmp_path):
    rows = "\n".join(f"ID_ab_{c},0" for c in LABELS)
    path = _write(tmp_path, f"ID,Label\n{rows}\nID_ab_subdural,1\n")
    with pytest.raises(LabelError, match=r"lines 6, 8: duplicate rows for ID_ab_subdural disagree"):
        read_labels(path)


def test_missing_subtype_names_the_image(tmp_path):
    rows = "\n".join(f"ID_ab_{c},0" for c in LABELS if c != "epidural")
    path = _write(tmp_path, f"ID,Label\n{rows}\n")
    with pytest.raises(LabelError, match=r"image ID_ab has no row for subtype\(s\) \['epidural'\]"):
        read_labels(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "ID_ab_epidural,0.5",
            "line 3: `Label` must be 0 or 1. Received: Label='0.5' for ID_ab_epidural",
        ),
        ("ID_ab_epidural,yes", "line 3: `Label` must be 0 or 1. Received: Label='yes'"),
        ("ID_ab_epidural,", "line 3: `Label` must be 0 or 1. Received: Label=''"),
        ("ID_AB_epidural,0", "line 3: `ID` must be ID_<hex>_<subtype>"),
        ("ID_ab_stroke,0", "line 3: `ID` must be ID_<hex>_<subtype>.*Received: 'ID_ab_stroke'"),
        ("../etc_any,0", "line 3: `ID` must be"),
        ("noseparator,0", "line 3: `ID` must be"),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, row, message):
    path = _write(tmp_path, f"ID,Label\nID_ab_any,0\n{row}\n")
    with pytest.raises(LabelError, match=message):
        read_labels(path)


def test_wrong_header_and_unreadable_file(tmp_path):
    with pytest.raises(LabelError, match="header must be 'ID,Label'. Received: Image,Target"):
        read_labels(_write(tmp_path, "Image,Target\nID_ab_any,0\n"))
    with pytest.raises(LabelError, match="cannot read label CSV"):
        read_labels(tmp_path / "missing.csv")
    with pytest.raises(LabelError, match="cannot read label CSV"):
        read_labels(_write(tmp_path, ""))


def test_image_ids_are_checked_before_becoming_paths(tmp_path):
    assert check_image_id("ID_0a1b") == "ID_0a1b"
    assert image_path(tmp_path, "ID_0a1b") == tmp_path / "ID_0a1b.dcm"
    for bad in ("ID_0A1B", "ID_", "ID_12g", "../ID_ab", "ID_ab/../x", "ID_ab ", 7):
        with pytest.raises(LabelError, match=r"must match \^ID_\[0-9a-f\]\+\$"):
            image_path(tmp_path, bad)


def test_prior_is_the_label_mean():
    wide = _wide(10)
    np.testing.assert_allclose(prior(wide).to_numpy(), wide.to_numpy().mean(axis=0))
