"""rsna.runfiles: every malformed run file is an RsnaError naming the file, never a crash,
and never a silently clipped value; through `rsna blend` too (exit 2, one line)."""

from __future__ import annotations

import shutil

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given

from harness import fuzz_settings
from rsna.cli import main
from rsna.data.labels import LABELS
from rsna.runfiles import RunFileError, read_long_predictions, read_wide_predictions

HEADER = "image_id," + ",".join(LABELS)
ROW = "ID_0000abcd," + ",".join(["0.1"] * 6)


def write(tmp_path, text: str | bytes, name: str = "oof.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_a_good_wide_file_round_trips(tmp_path):
    frame = read_wide_predictions(write(tmp_path, f"{HEADER}\n{ROW}\nID_0000abce,0,1,0.5,0.25,0,1e-7\n"))
    assert list(frame.index) == ["ID_0000abcd", "ID_0000abce"] and list(frame.columns) == list(LABELS)
    assert frame.loc["ID_0000abce", "any"] == pytest.approx(1e-7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{HEADER}\nID_0000abcd,1.5,0,0,0,0,0\n", r"line 2, column epidural: a prediction must be a number in \[0, 1\]. Received: '1.5'"),
        (f"{HEADER}\nID_0000abcd,-0.2,0,0,0,0,0\n", "Received: '-0.2'"),
        (f"{HEADER}\nID_0000abcd,nan,0,0,0,0,0\n", "Received: 'nan'"),
        (f"{HEADER}\nID_0000abcd,0,0,0,0,0,inf\n", "column any: .* Received: 'inf'"),
        (f"{HEADER}\nID_0000abcd,high,0,0,0,0,0\n", "Received: 'high'"),
        (f"{HEADER}\nID_0000abcd,,0,0,0,0,0\n", "Received: ''"),
        (f"{HEADER}\n{ROW}\n{ROW}\n", "'ID_0000abcd' appears more than once \\(lines 2 and 3\\)"),
        (f"{HEADER}\nnot_an_id,0,0,0,0,0,0\n", "line 2: image_id must be ID_ and lowercase hex"),
        (f"{HEADER}\nID_0000ABCD,0,0,0,0,0,0\n", "lowercase hex. Received: 'ID_0000ABCD'"),
        ("image_id,epidural\nID_0000abcd,0\n", "the columns must be"),
        (f"{HEADER},extra\n{ROW},1\n", "the columns must be"),
        (f"{HEADER}\n", "no rows"),
        ("", "empty \\(no header\\)"),
        (b"image_id,\xff\xfe\n", "not UTF-8 text"),
        (f"{HEADER}\n{ROW},1,2\n", "not a CSV table"),
    ],
)  # fmt: skip
def test_malformed_wide_files(tmp_path, text, message):
    with pytest.raises(RunFileError, match=message):
        read_wide_predictions(write(tmp_path, text))


def _long(rows: list[tuple[str, str]]) -> str:
    return "ID,Label\n" + "".join(f"{i},{v}\n" for i, v in rows)


SIX = [(f"ID_0000abcd_{label}", "0.5") for label in LABELS]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (SIX[:5], r"image ID_0000abcd has no rows for \['any'\]"),
        ([*SIX, ("ID_0000abcd_other", "0.5")], "the ID must end in one of"),
        ([*SIX, SIX[0]], "appears more than once"),
        ([*SIX[:5], ("ID_0000abcd_any", "inf")], "line 7, column Label: .* Received: 'inf'"),
        ([("_epidural", "0.5")], "the image ID must be ID_ and lowercase hex. Received: ''"),
        ([("", "0.5")], "the ID must end in one of"),
    ],
)
def test_malformed_submissions(tmp_path, rows, message):
    with pytest.raises(RunFileError, match=message):
        read_long_predictions(write(tmp_path, _long(rows), "submission.csv"))
    assert read_long_predictions(write(tmp_path, _long(SIX), "good.csv")).shape == (1, 6)


@fuzz_settings(150)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_give_a_frame_of_probabilities_or_a_run_file_error(tmp_path, data):
    for reader, header in ((read_wide_predictions, HEADER), (read_long_predictions, "ID,Label")):
        for body in (data, header.encode() + b"\n" + data):
            path = write(tmp_path, body)
            try:
                frame = reader(path)
            except RunFileError:
                continue
            values = frame.to_numpy()
            assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
            assert frame.index.is_unique and list(frame.columns) == list(LABELS)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("oof_value", "a prediction must be a number in [0, 1]. Received: '1.5'"),
        ("test_inf", "Received: 'inf'"),
        ("oof_twice", "is in fold_0/oof.csv and fold_1/oof.csv"),
        ("unknown_id", "out-of-fold images have no labels"),
        ("header_only", "no rows"),
    ],
)
def test_blend_refuses_impossible_runs_with_one_error_line(two_runs, tiny_work, capsys, damage, message):
    root, *_ = two_runs
    bad = root / "bad"
    shutil.copytree(root / "a", bad)
    oof0 = bad / "fold_0" / "oof.csv"
    frame = pd.read_csv(oof0, dtype=str)
    if damage == "oof_value":
        frame.loc[0, "epidural"] = "1.5"
    elif damage == "oof_twice":
        extra = pd.read_csv(bad / "fold_1" / "oof.csv", dtype=str).iloc[:1]
        frame = pd.concat([frame, extra])
    elif damage == "unknown_id":
        frame.loc[0, "image_id"] = "ID_ffffffffff"
    elif damage == "header_only":
        frame = frame.iloc[:0]
    frame.to_csv(oof0, index=False)
    if damage == "test_inf":
        sub = pd.read_csv(bad / "submission.csv", dtype=str)
        sub.loc[3, "Label"] = "inf"
        sub.to_csv(bad / "submission.csv", index=False)
    status = main(["blend", str(root / "b"), str(bad), "--out", str(root / "out"), "--work", str(tiny_work)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (root / "out" / "submission.csv").exists()
