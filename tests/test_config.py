"""rsna.config: TOML in, frozen dataclasses out, every bad key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsna.config import (
    Config,
    ConfigError,
    config_from_dict,
    dump_config,
    is_config_name,
    load_config,
    parse_override,
    shipped_configs,
    with_paths,
)
from rsna.data.windowing import BONE, BRAIN, SOFT_TISSUE, SUBDURAL

CONFIGS = Path(__file__).resolve().parents[1] / "rsna" / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    demo = load_config(CONFIGS / "demo.toml")
    assert demo.name == "demo" and demo.model.backbone == "small_cnn"
    assert demo.image.windows == (BRAIN, SUBDURAL, SOFT_TISSUE) and demo.channels == 3
    baseline = load_config(CONFIGS / "baseline.toml")
    assert (
        baseline.model.backbone == "EfficientNetB0"
        and baseline.image.size == 256
        and baseline.image.context == 1
    )
    assert baseline.model.weights.name == "efficientnetb0_notop.h5"
    assert baseline.model.precision == "auto" and demo.model.weights == "random"
    # real configs follow the published choices, not the demo's
    for real in (baseline, load_config(CONFIGS / "strong.toml")):
        assert real.sequence.inputs == ("logits",) and real.augment.interpolation == "linear"
        assert (real.sequence.any_coupling, real.sequence.subtype_l2, real.sequence.bags) == (0, 0, 1)
    # issue 23 re-decided the demo's tuned options on the harder phantom: none kept
    assert demo.augment.interpolation == "linear"
    assert (demo.sequence.any_coupling, demo.sequence.subtype_l2, demo.sequence.bags) == (0, 0, 1)
    assert baseline.image.crop == "head" and demo.image.crop == "none"
    strong = load_config(CONFIGS / "strong.toml")
    assert strong.model.backbone == "EfficientNetB3" and strong.image.size == 384
    assert strong.augment.crop_area == (0.7, 1.0) and strong.sequence.conv == 5
    # Shipped configs load by name too, as `rsna train demo` does; nothing links to them.
    assert load_config("demo") == demo and load_config("baseline") == baseline
    assert shipped_configs() == ["baseline", "demo", "strong"]
    assert not (Path(__file__).resolve().parents[1] / "configs").exists()


def test_defaults_and_run_dir(tmp_path):
    config = load_config(write(tmp_path, '[data]\nwork_dir = "w"\n'))
    assert config.name == "exp" and config.train.label_weights == (1, 1, 1, 1, 1, 2)
    assert config.data.work_dir == Path("w").resolve()
    assert config.run_dir == Path("w").resolve() / "runs" / "exp"
    assert config.fold_dir(2) == config.run_dir / "fold_2"
    moved = with_paths(config, work_dir=tmp_path / "a", out_dir=tmp_path / "b")
    assert (
        moved.run_dir == (tmp_path / "b").resolve()
        and moved.data.work_dir == (tmp_path / "a").resolve()
    )
    with pytest.raises(Exception, match="cannot assign|frozen"):
        config.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nepoch = 3\n", "unknown key `train.epoch`; did you mean `train.epochs`?"),
        ("[trian]\n", "unknown key `trian`; did you mean `train`?"),
        ("[train]\nepochs = 0\n", "`train.epochs` must be positive. Received: epochs=0"),
        ("[train]\nepochs = 'ten'\n", "`train.epochs` must be an integer. Received: 'ten'"),
        ("[train]\nbatch_size = 2.5\n", "`train.batch_size` must be an integer"),
        ("[train]\naugment = 1\n", "`train.augment` must be true or false"),
        (
            "[train]\nlabel_weights = [1, 1, 1]\n",
            "`train.label_weights` must be 6 positive numbers",
        ),
        ("[train]\nschedule = 'step'\n", "`train.schedule` must be one of"),
        (
            "[train]\nwarmup_epochs = 10\nepochs = 10\n",
            "`train.epochs` must be more than `train.warmup_epochs`.*set train.warmup_epochs=9",
        ),
        ("[train]\nwarmup_epochs = -1\n", "`train.warmup_epochs` must be in \\[0, epochs\\)"),
        ("[image]\nwindows = ['brain', 'lung']\n", "`image.windows`: Unknown window 'lung'"),
        ("[image]\nsize = 16\n", "`image.size` must be >= 32. Received: size=16"),
        ("[model]\nbackbone = 'VGG99'\n", "`model.backbone` must be one of"),
        ("[model]\ndropout = 1.0\n", "`model.dropout` must be in \\[0, 1\\)"),
        ("[image]\ncrop = 'brain'\n", "`image.crop` must be one of \\('none', 'head'\\)"),
        ("[augment]\nerase = 1.5\n", "`erase` must be in \\[0, 1\\]. Received: erase=1.5"),
        ("[sequence]\nany_coupling = -1.0\n", "`sequence.any_coupling` must be in \\[0, 2\\]"),
        ("[augment]\nrotate = 270.0\n", "\\[augment\\] `rotate` must be in \\[0, 180\\]"),
        ("[predict]\ntta = ['dflip']\n", "`predict.tta` entries must be one of"),
        ("[predict]\ntta = ['random_crop:0']\n", "'random_crop:N' with N in \\[1, 64\\]. Received: 'random_crop:0'"),
        ("[predict]\ntta = []\n", "`predict.tta` must name at least one view"),
        ("[predict]\ntta = ['hflip', 'hflip']\n", "names a view twice"),
        ("[predict]\nclip = 0.7\n", "`predict.clip` must be in \\(0, 0.5\\)"),
        ("[sequence]\nbags = 0\n", "`sequence.bags` must be in \\[1, 16\\]. Received: bags=0"),
        ("[sequence]\nposition = 'yes'\n", "`sequence.position`"),
        ("[data]\nwork_dir = 3\n", "`data.work_dir` must be a path string"),
        ("train = 3\n", "`train` must be a table"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.toml")


def test_dump_round_trip(tmp_path):
    config = load_config(
        CONFIGS / "demo.toml", overrides={"image.windows": ["brain", "600/2800", "30/90"]}
    )
    assert config.image.windows[1] == BONE
    path = dump_config(config, tmp_path / "saved.toml")
    assert load_config(path) == config


def test_overrides(tmp_path):
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("model.backbone=ResNet50") == ("model.backbone", "ResNet50")
    assert parse_override("predict.tta=['none']") == ("predict.tta", ["none"])
    config = load_config(CONFIGS / "demo.toml", overrides=dict([parse_override("train.epochs=3")]))
    assert config.train.epochs == 3
    with pytest.raises(ConfigError, match="--set takes section.key=value"):
        parse_override("epochs")
    with pytest.raises(ConfigError, match="override must be section.key=value"):
        load_config(CONFIGS / "demo.toml", overrides={"epochs": 3})
    assert isinstance(config, Config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Every field converts by its declared type, so a value of the wrong shape is a
        # ConfigError naming the key, never a TypeError later.
        ('[data]\nwork_dir = ""\n', "`data.work_dir` must be a path string. Received: ''"),
        ("[image]\nwindows = 5\n", "`image.windows` must be a list of window names"),
        ("[image]\nwindows = [1, 2]\n", "`image.windows` must be a list of window names"),
        ("[image]\ncurve = 'cubic'\n", "`image.curve` must be one of \\('linear', 'sigmoid'\\)"),
        ("[sequence]\ninputs = [['logits']]\n", "`sequence.inputs` must be a non-empty list of"),
        ("[train]\nlabel_weights = [1, 1, 1, 1, 1, 'x']\n", "`train.label_weights\\[5\\]` must be a number"),
        ("[predict]\nensemble = 3\n", "`predict.ensemble` must be one of"),
        ("[model]\nbackbone = 'efficientnetb0'\n", "did you mean 'EfficientNetB0'\\?"),
        ("[model]\nbackbone = 'InceptionV3'\n[image]\nsize = 64\n", "`image.size` must be >= 75 for InceptionV3"),
        ("name = 3\n", "`name` must be a non-empty string"),
    ],
)  # fmt: skip
def test_values_convert_by_field_type(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_empty_optional_path_is_none_and_paths_resolve(tmp_path):
    config = load_config(write(tmp_path, '[data]\nout_dir = ""\nwork_dir = "~/w"\n'))
    assert (
        config.data.out_dir is None and config.data.work_dir == Path("~/w").expanduser().resolve()
    )


def test_a_shipped_config_by_name_with_overrides():
    config = load_config("demo", overrides={"model.backbone": "ResNet50", "image.size": 64})
    assert (config.name, config.model.backbone, config.image.size) == ("demo", "ResNet50", 64)
    with pytest.raises(ConfigError, match="'demmo' is not a shipped config; did you mean 'demo'"):
        load_config("demmo")


def test_a_folder_or_file_in_the_cwd_never_shadows_a_shipped_config(tmp_path, monkeypatch, capsys):
    """After `rsna demo`, ./demo/ is a folder (and a user may keep a file named baseline):
    bare names still mean the shipped configs, and paths still mean files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo" / "work" / "runs").mkdir(parents=True)
    (tmp_path / "baseline").write_text("not toml [")
    (tmp_path / "mine.toml").write_text('name = "mine"\n[train]\nepochs = 3\n')
    shipped = load_config(CONFIGS / "demo.toml")
    assert load_config("demo") == shipped
    assert load_config("baseline") == load_config(CONFIGS / "baseline.toml")
    assert is_config_name("demo") and not is_config_name("./demo") and not is_config_name("a.toml")
    assert load_config("mine.toml").train.epochs == 3
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config("./demo")
    from rsna.cli import main

    status = main(["train", "demo", "--fold", "7", "--set", f"data.work_dir='{tmp_path}/none'"])
    assert status == 2 and "Is a directory" not in capsys.readouterr().err


def test_weights_take_imagenet_by_name_and_a_path_otherwise(tmp_path):
    assert config_from_dict({"model": {"weights": "imagenet"}}).model.weights == "imagenet"
    assert config_from_dict({"model": {"weights": ""}}).model.weights is None
    file = tmp_path / "b0_notop.h5"
    file.write_bytes(b"x")
    assert config_from_dict({"model": {"weights": str(file)}}).model.weights == file


def test_the_learning_rate_scales_linearly_with_the_global_batch_when_asked():
    plain = config_from_dict({"train": {"batch_size": 256, "learning_rate": 1e-3}})
    assert plain.train.effective_learning_rate == 1e-3
    scaled = config_from_dict(
        {"train": {"batch_size": 256, "learning_rate": 1e-3, "scale_learning_rate": 64}}
    )
    assert scaled.train.effective_learning_rate == pytest.approx(4e-3)
    with pytest.raises(ConfigError, match="`train.scale_learning_rate` must be 0"):
        config_from_dict({"train": {"scale_learning_rate": -1}})


def test_the_experiment_record_holds_what_a_fold_learns_from(tmp_path):
    from rsna.config import experiment_changes, experiment_record

    config = load_config("baseline")
    record = experiment_record(config, stage=1)
    assert record["model.weights"] == "efficientnetb0_notop.h5" and record["train.epochs"] == 3
    assert not any(k.startswith("sequence.") for k in record) and "predict.tta" in record
    assert {"data.work_dir", "data.out_dir", "train.workers", "predict.batch_size", "predict.ensemble"}.isdisjoint(record)  # fmt: skip
    assert "sequence.units" in experiment_record(config, stage=2)
    moved = load_config("baseline", overrides={"data.work_dir": str(tmp_path), "model.weights": str(tmp_path / "efficientnetb0_notop.h5"), "train.workers": 4, "predict.ensemble": "logit_mean"})  # fmt: skip
    assert experiment_changes(record, moved, stage=1) == []
    other = load_config("baseline", overrides={"train.epochs": 5, "augment.rotate": 10.0})
    assert experiment_changes(record, other, stage=1) == ["augment.rotate: 30.0 -> 10.0", "train.epochs: 3 -> 5"]
