"""rsna.data.metadata and rsna.data.paths: prepare on a synthetic competition, resume, discovery."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from rsna.cli import main
from rsna.data import metadata
from rsna.data.labels import read_labels
from rsna.data.metadata import (
    METADATA_COLUMNS,
    PrepareError,
    add_slice_order,
    prepare,
    read_metadata,
)
from rsna.data.paths import CompetitionNotFound, find_competition
from rsna.errors import DataWarning


@pytest.fixture(scope="module")
def prepared(tiny_competition, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    with pytest.warns(DataWarning):
        return prepare(tiny_competition.root, work, workers=2)


def test_report_names_every_planted_quirk(prepared, tiny_competition):
    report, manifest = prepared.report, tiny_competition.manifest
    assert sorted(report["unreadable"]) == sorted(
        manifest["corrupt"]["train"] + manifest["corrupt"]["test"]
    )
    assert all(r.startswith("truncated pixel data") for r in report["unreadable"].values())
    assert report["bad_intercept_fixed"] == manifest["bad_intercept"]
    assert sorted(report["odd_size"]) == manifest["odd_size"]
    assert report["regular_size"] == "64x64"
    assert report["duplicate_label_rows_dropped"] == 6 * len(manifest["duplicated_label_images"])
    assert report["duplicate_label_images"] == manifest["duplicated_label_images"]
    assert report["images"] == manifest["images"]
    assert report["labels_without_file"] == [] and report["files_without_labels"] == []
    text = (prepared.work_dir / "prepare_report.md").read_text()
    for image_id in (
        manifest["corrupt"]["train"]
        + manifest["bad_intercept"][:3]
        + manifest["duplicated_label_images"]
    ):
        assert image_id in text


def test_metadata_table(prepared, tiny_competition):
    meta = read_metadata(prepared.work_dir)
    assert list(meta.columns) == list(METADATA_COLUMNS) and meta.index.name == "image_id"
    assert len(meta) == sum(tiny_competition.manifest["images"].values())
    assert meta["patient_id"].str.startswith("ID_").all()
    corrupt = tiny_competition.manifest["corrupt"]["train"][0]
    assert not meta.at[corrupt, "readable"] and meta.at[corrupt, "series_uid"] != ""
    assert meta["readable"].sum() == len(meta) - 2
    assert meta.loc[tiny_competition.manifest["bad_intercept"], "bad_intercept"].all()


def test_slices_are_ordered_by_z_not_instance_number(prepared):
    meta = read_metadata(prepared.work_dir)
    reversed_series = 0
    for _, series in meta.groupby("series_uid"):
        ordered = series.sort_values("slice_index")
        assert ordered["slice_index"].tolist() == list(range(len(series)))
        assert (ordered["series_length"] == len(series)).all()
        assert ordered["z"].is_monotonic_increasing
        reversed_series += ordered["instance_number"].is_monotonic_decreasing
    assert reversed_series >= 1  # some series number their instances top-down


def test_add_slice_order_breaks_ties_and_handles_missing_series():
    meta = pd.DataFrame(
        {
            "series_uid": ["a", "a", "a", ""],
            "z": [5.0, 5.0, 1.0, np.nan],
            "instance_number": [2, 1, 3, -1],
        },
        index=pd.Index(["ID_1", "ID_2", "ID_3", "ID_4"], name="image_id"),
    )
    for column in METADATA_COLUMNS:
        if column not in meta:
            meta[column] = 0
    ordered = add_slice_order(meta)
    assert ordered["slice_index"].tolist() == [2, 1, 0, -1]
    assert ordered["series_length"].tolist() == [3, 3, 3, 0]


def test_labels_written_equal_read_labels(prepared, tiny_competition):
    written = pd.read_parquet(prepared.work_dir / "labels.parquet")
    with pytest.warns(DataWarning):
        expected = read_labels(tiny_competition.root / "stage_2_train.csv")
    pd.testing.assert_frame_equal(written, expected)


def test_rerun_reuses_finished_work(prepared, tiny_competition):
    shards = sorted((prepared.work_dir / "cache" / "metadata").glob("*.parquet"))
    assert shards
    before = {p: p.stat().st_mtime_ns for p in shards}
    labels_mtime = (prepared.work_dir / "labels.parquet").stat().st_mtime_ns
    with pytest.warns(DataWarning, match="cannot be read"):
        again = prepare(tiny_competition.root, prepared.work_dir, workers=1)
    assert {p: p.stat().st_mtime_ns for p in shards} == before
    assert (prepared.work_dir / "labels.parquet").stat().st_mtime_ns == labels_mtime
    pd.testing.assert_frame_equal(again.metadata, prepared.metadata)
    assert again.report == prepared.report  # duplicates are still counted when labels are reused
    assert not [p for p in prepared.work_dir.rglob("*") if ".tmp" in p.name]


def test_a_lost_shard_is_rescanned(tiny_competition, tmp_path, monkeypatch):
    monkeypatch.setattr(metadata, "SHARD_SIZE", 20)
    with pytest.warns(DataWarning):
        first = prepare(tiny_competition.root, tmp_path, workers=1)
    shards = sorted((tmp_path / "cache" / "metadata").glob("*.parquet"))
    assert len(shards) >= 3
    shards[1].unlink()  # as if the run had been killed while scanning it
    with pytest.warns(DataWarning):
        second = prepare(tiny_competition.root, tmp_path, workers=1)
    assert shards[1].exists()
    pd.testing.assert_frame_equal(second.metadata, first.metadata)


def test_report_png_is_not_blank(prepared):
    import matplotlib.image

    image = matplotlib.image.imread(prepared.work_dir / "prepare_report.png")
    assert image.shape[0] > 100 and image.reshape(-1, image.shape[-1]).std(axis=0).max() > 0.05


def test_find_competition_in_nested_and_2019_layouts(tiny_competition, tmp_path):
    nested = (
        tmp_path
        / "input"
        / "rsna-intracranial-hemorrhage-detection"
        / "rsna-intracranial-hemorrhage-detection"
    )
    nested.mkdir(parents=True)
    shutil.copy(tiny_competition.root / "stage_2_train.csv", nested)
    (nested / "stage_2_train_images").mkdir()
    found = find_competition(tmp_path / "input")
    assert found.root == nested.resolve() and found.train_dir.name == "stage_2_train_images"
    assert found.test_dir is None and found.sample_csv is None
    assert find_competition(tiny_competition.root).train_dir.name == "stage_2_train"


def test_find_competition_searches_kaggle_input_then_cwd(tiny_competition, tmp_path, monkeypatch):
    from rsna.data import paths

    monkeypatch.setattr(paths, "KAGGLE_INPUT", tmp_path / "no-kaggle-here")
    monkeypatch.chdir(tiny_competition.root.parent)
    assert find_competition().root == tiny_competition.root.resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompetitionNotFound, match="looked for stage_2_train.csv.*no-kaggle-here"):
        find_competition()
    (tmp_path / "stage_2_train.csv").write_text("ID,Label\n")  # a label file but no image folder
    with pytest.raises(CompetitionNotFound):
        find_competition(tmp_path)


def test_prepare_refuses_an_empty_image_folder(tmp_path):
    (tmp_path / "stage_2_train").mkdir()
    (tmp_path / "stage_2_train.csv").write_text("ID,Label\n")
    with pytest.raises(PrepareError, match="no .dcm files found"):
        prepare(tmp_path, tmp_path / "work")


def test_cli_synth_and_prepare(tmp_path, capsys):
    data, work = tmp_path / "data", tmp_path / "work"
    assert (
        main(
            [
                "synth",
                str(data),
                "--patients",
                "3",
                "--slices",
                "3",
                "--size",
                "48",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    with pytest.warns(DataWarning):
        assert main(["prepare", str(data), "--out", str(work), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "## Unreadable files: 2" in out and "truncated pixel data" in out
    assert (work / "metadata.parquet").exists() and (work / "prepare_report.png").exists()
    assert main(["synth", str(data)]) == 2
    assert "already holds a competition" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--size", "8"]) == 2
    assert "`size` must be an integer >= 32. Received: size=8" in capsys.readouterr().err


def test_the_header_scan_splits_into_parts(tiny_competition, tmp_path, monkeypatch):
    """Two machines scan half each; the work folder equals one machine's."""
    from rsna.data.metadata import PrepareError, scan_part

    monkeypatch.setattr(metadata, "SHARD_SIZE", 16)
    whole = prepare(tiny_competition.root, tmp_path / "whole", workers=1)
    assert scan_part(tiny_competition.root, tmp_path / "parts", num_shards=2, shard_index=0, workers=1) > 0  # fmt: skip
    assert scan_part(tiny_competition.root, tmp_path / "parts", num_shards=2, shard_index=1, workers=1) == 0  # fmt: skip
    scanned = sorted(p.name for p in (tmp_path / "parts" / "cache" / "metadata").iterdir())
    parts = prepare(tiny_competition.root, tmp_path / "parts", workers=1)  # scans nothing more
    assert sorted(p.name for p in (tmp_path / "parts" / "cache" / "metadata").iterdir()) == scanned
    pd.testing.assert_frame_equal(parts.metadata, whole.metadata)
    with pytest.raises(
        PrepareError,
        match="`shard_index` must be in \\[0, num_shards=2\\). Received: shard_index=3",
    ):
        scan_part(tiny_competition.root, tmp_path / "x", num_shards=2, shard_index=3)
