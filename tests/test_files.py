"""rsna.files: atomic writes never leave a partial file under the final name."""

from __future__ import annotations

import pandas as pd
import pytest

from rsna import files


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_temporary_name_keeps_the_suffix(tmp_path):
    with files.atomic_path(tmp_path / "a" / "b.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path / "a"
        tmp.write_bytes(b"x")
    assert (tmp_path / "a" / "b.npy").read_bytes() == b"x"


def test_json_parquet_csv_round_trips(tmp_path):
    files.write_json(tmp_path / "a.json", {"b": [1, 2], "a": "x"})
    assert files.read_json(tmp_path / "a.json") == {"a": "x", "b": [1, 2]}
    df = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["ID_a", "ID_b"], name="image_id"))
    files.write_parquet(df, tmp_path / "a.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), df)
    files.write_csv(df.reset_index(), tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text().splitlines() == ["image_id,x", "ID_a,1", "ID_b,2"]
    assert files.fingerprint(tmp_path / "a.csv")["size"] == len("image_id,x\nID_a,1\nID_b,2\n")


def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path):
    from rsna.files import atomic_folder

    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "fold_0").mkdir()
        (tmp / "fold_0" / "a.csv").write_text("first")
        (tmp / "fold_1").mkdir()
    assert sorted(p.name for p in target.iterdir()) == ["fold_0", "fold_1"]
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "half").write_text("written before the failure")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["fold_0", "fold_1"]  # untouched
    with atomic_folder(target) as tmp:
        (tmp / "fold_0").mkdir()  # a rerun with fewer folds: fold_1 must go
    assert [p.name for p in target.iterdir()] == ["fold_0"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left beside it
