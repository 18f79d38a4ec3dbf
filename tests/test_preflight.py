"""rsna.preflight: no silent fallback to the DICOMs or to random weights."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from harness import TINY_CODEC, TINY_SPEC, prepared_competition, tiny_experiment
from rsna.cli import main
from rsna.data.cache import StoreMissing, cache_dir
from rsna.preflight import WeightsMissing, check_store, find_weights, resolve_weights


def _with_weights(config, weights):
    return dataclasses.replace(config, model=dataclasses.replace(config.model, weights=weights))


def test_unset_weights_are_refused_and_random_is_the_explicit_choice(tiny_work, tmp_path):
    config = tiny_experiment(tiny_work, tmp_path / "run", name="w")
    assert resolve_weights(config) is config  # "random", as the harness sets it
    with pytest.raises(WeightsMissing, match='`model.weights` is not set.*"random" to train'):
        resolve_weights(_with_weights(config, None))


def test_a_weights_file_absent_at_its_path_is_found_by_name_and_named(tmp_path, capsys):
    attached = tmp_path / "input" / "keras-weights" / "v1" / "efficientnetb0_notop.h5"
    attached.parent.mkdir(parents=True)
    attached.write_bytes(b"h5")
    config = _with_weights(
        tiny_experiment(tmp_path, tmp_path / "run", name="w"),
        Path("/nowhere/efficientnetb0_notop.h5"),
    )
    found = resolve_weights(config, folders=(tmp_path / "input",))
    assert found.model.weights == attached
    assert f"efficientnetb0_notop.h5 found at {attached}" in capsys.readouterr().out
    with pytest.raises(WeightsMissing, match="Add Input, then a dataset that holds efficientnetb0"):
        resolve_weights(config, folders=(tmp_path / "elsewhere",))
    assert find_weights("efficientnetb0_notop.h5", (tmp_path / "none",)) is None


def test_a_missing_store_names_its_folder_and_the_command(tiny_work, tmp_path):
    config = tiny_experiment(tiny_work, tmp_path / "run", name="s", image={"size": 48})
    with pytest.raises(StoreMissing) as caught:
        check_store(config, command="rsna preprocess my.toml")
    message = str(caught.value)
    assert "size=48" in message and "is not built" in message
    assert "the work folder holds only: " in message and "32_brain-subdural-soft_lossless" in message
    assert "Build it with `rsna preprocess my.toml`" in message
    assert check_store(tiny_experiment(tiny_work, tmp_path / "run", name="s")) == cache_dir(
        tiny_work, TINY_SPEC, TINY_CODEC
    )
    off = tiny_experiment(tiny_work, tmp_path / "run", name="s", data={"cache": False})
    assert check_store(off) is None


def test_the_cli_stops_before_any_work_without_store_or_weights(tiny_work, tmp_path, capsys):
    out = tmp_path / "run"
    where = ["--set", f"data.work_dir='{tiny_work}'", "--set", f"data.out_dir='{out}'"]
    assert main(["train", "baseline", *where, "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert "the store this config reads (size=256" in err and "crop=head" in err
    assert "rsna preprocess baseline --set" in err
    # the store matches now; the weights file the baseline names is not attached here
    tiny = ["--set", "image.size=32", "--set", "image.context=0", "--set", "image.crop='none'",
            "--set", "data.compression='lossless'"]  # fmt: skip
    assert main(["train", "baseline", *where, *tiny, "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert "`model.weights` not found" in err and "efficientnetb0_notop.h5" in err
    for command in ("predict", "embed"):
        assert main([command, "baseline", *where]) == 2
        assert "rsna preprocess baseline" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_training_and_prediction_from_a_store_never_open_a_dicom(tmp_path):
    """The store is the only image source: the DICOM folders are emptied after it is built."""
    from rsna.training import runner
    from rsna.training.embed import embed_folds

    competition, work, prepared = prepared_competition(tmp_path, seed=3)
    for folder in ("stage_2_train", "stage_2_test"):
        shutil.move(competition.root / folder, tmp_path / f"away_{folder}")
        (competition.root / folder).mkdir()  # the competition is still found; no file is there
    config = tiny_experiment(
        work, tmp_path / "run", name="store_only", train={"epochs": 1}, image={"context": 1}
    )
    (result,) = runner.train(config, [0])
    assert len(result.oof) > 0 and result.oof.notna().all().all()
    predicted = runner.predict(config)
    meta = prepared.metadata
    corrupt = sorted(meta.index[(meta["split"] == "test") & ~meta["readable"]])
    assert predicted.report["unreadable_given_prior"] == corrupt  # known from the store alone
    assert predicted.report["missing_files_given_prior"] == []
    assert embed_folds(config, [0])[0]


def test_a_model_that_cannot_be_built_writes_nothing(tiny_work, tmp_path, capsys):
    """Weights that exist but do not load fail while the fold is planned: no config.toml,
    no fold folder (a refused keras-hub preset used to leave both)."""
    weights = tmp_path / "efficientnetb0_notop.h5"
    weights.write_bytes(b"not an HDF5 file")
    out = tmp_path / "run"
    sets = [f"data.work_dir='{tiny_work}'", f"data.out_dir='{out}'", "image.size=32", "image.context=0",
            "model.backbone='EfficientNetB0'", f"model.weights='{weights}'"]  # fmt: skip
    assert main(["train", "demo", *(w for s in sets for w in ("--set", s)), "--fold", "0"]) == 2
    assert "`model.weights` do not fit EfficientNetB0" in capsys.readouterr().err
    assert not out.exists()
