"""rsna.cli: the one error boundary. Every careless argument, bad file and bad config ends
as ``rsna: error: ...`` with exit status 2 and writes nothing; a bug says it is one.

The cases are the red team's: each failed with a traceback, or was accepted and failed
only after training, before this boundary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import TF_NOISE
from rsna.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.err


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synth", "{tmp}/c", "--workers", "0"], "`workers` must be positive. Received: workers=0"),
        (["synth", "{tmp}/c", "--workers", "-1"], "`workers` must be positive. Received: workers=-1"),
        (["synth", "{tmp}/c", "--size", "-1"], "`size` must be positive. Received: size=-1"),
        (["synth", "{tmp}/c", "--size", "100000"], "`size` must be at most"),
        (["synth", "{tmp}/c", "--patients", "ten"], "`patients` must be an integer. Received: patients='ten'"),
        (["synth", "{tmp}/c", "--test-fraction", "nan"], "`test_fraction` must be a number in (0, 1)"),
        (["synth", "{tmp}/file"], "`out` must be a folder. Received: out="),
        (["prepare", "{tmp}/c", "--out", "{tmp}/file"], "`out` must be a folder"),
        (["prepare", "{tmp}/c", "--out", "{tmp}/w", "--workers", "0"], "`workers` must be positive"),
        (["preprocess", "demo", "--set", "image.size=-1"], "`image.size` must be >= 32"),
        (["preprocess", "demo", "--out", "{tmp}/file"], "`out` must be a folder"),
        (["preprocess", "demo", "--set", "image.windows='brain,lung'"], "Unknown window 'lung'"),
        (["preprocess", "demo", "--set", "data.compression='gzip'"], "`data.compression` must be one of"),
        (["preprocess", "demo", "--shard-size", "0"], "`shard_size` must be positive"),
        (["folds", "{tmp}/w", "--n-folds", "1"], "`n_folds` must be >= 2"),
        (["train", "demo", "--fold", "x"], "`fold` must be an integer. Received: fold='x'"),
        (["train", "demo", "--fold", "0,-1"], "`fold` must be >= 0"),
        (["train", "demo", "--collective-timeout", "0"], "`collective_timeout` must be a positive number. Received: collective_timeout='0'"),
        (["train", "demo", "--collective-timeout", "inf"], "`collective_timeout` must be a positive number"),
        (["demo", "--out", "{tmp}/file"], "`out` must be a folder"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_where_they_are_parsed(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("not a folder")
    status, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert status == 2
    assert "rsna: error:" in err and message in err
    assert "Traceback" not in err
    assert files_under(tmp_path) == [tmp_path / "file"]  # nothing was written


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("image.windows=5", "`image.windows` must be a list of window names"),
        ("image.windows=[1,2]", "`image.windows` must be a list of window names"),
        ('sequence.inputs=[["logits"]]', "`sequence.inputs` must be a non-empty list of"),
        ("train.seed=-1", "`train.seed` must be in [0, 2**32)"),
        ("image.size=1e9", "`image.size` must be an integer"),
        ("image.size=100000", "`image.size` must be at most 2048"),
        ("train.learning_rate=inf", "`train.learning_rate` must be a finite number"),
        ("train.min_learning_rate=nan", "`train.min_learning_rate` must be a finite number"),
        ("train.min_learning_rate=-5", "`train.min_learning_rate` must be in [0, learning_rate]"),
        ("train.label_weights=[1,1,1,1,1,inf]", "`train.label_weights[5]` must be a finite number"),
        ("data.work_dir=''", "`data.work_dir` must be a path string"),
    ],
)
def test_bad_config_values_fail_at_load_before_anything_is_written(
    tiny_work, tmp_path, capsys, setting, message
):
    out = tmp_path / "run"
    status, err = run(
        capsys, "train", "demo", "--set", f"data.work_dir='{tiny_work}'", "--set", f"data.out_dir='{out}'", "--set", setting
    )  # fmt: skip
    assert status == 2 and "rsna: error:" in err and message in err, err
    assert not out.exists()


TWO_WORKERS = '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": %s}}'


@pytest.mark.parametrize(
    ("tf_config", "argv", "message"),
    [
        (None, ["--strategy", "multiworker"], "needs TF_CONFIG listing 2 or more workers"),
        ("{bad", [], "TF_CONFIG is not JSON"),
        (TWO_WORKERS % 5, [], "`task.index` must be an integer in [0, 2)"),
        (None, ["--strategy", "tpu"], "`strategy='tpu'` but this machine shows no TPU"),
        ('{"cluster": {"worker": ["127.0.0.1:1", "nohost"]}, "task": {"type": "worker", "index": 0}}', [], "must be 'host:port'"),
    ],
)
def test_a_cluster_that_cannot_train_is_refused_before_anything_starts(
    tiny_work, tmp_path, capsys, monkeypatch, tf_config, argv, message
):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    out = tmp_path / "run"
    status, err = run(
        capsys, "train", "demo", "--set", f"data.work_dir='{tiny_work}'", "--set", f"data.out_dir='{out}'", "--set", "image.size=32", *argv
    )  # fmt: skip
    assert status == 2 and "rsna: error:" in err and message in err, err
    assert not out.exists()


def test_stage_2_leaves_the_other_workers_idle(tiny_work, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", TWO_WORKERS % 1)
    out = tmp_path / "run"
    status = main(["train", "demo", "--stage", "2", "--set", f"data.work_dir='{tiny_work}'", "--set", f"data.out_dir='{out}'"])  # fmt: skip
    assert status == 0
    assert "worker:1: stage 2 trains on the chief alone" in capsys.readouterr().out
    assert not out.exists()


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "x.toml"
    path.write_bytes('name = "x"\n# caf\u00e9\n'.encode("utf-16"))
    status, err = run(capsys, "train", path)
    assert status == 2 and "a config must be UTF-8 text" in err


def test_wrong_inputs_write_nothing(tiny_work, tmp_path, capsys):
    # preprocess on a folder that was never prepared: no cache.json left behind
    status, err = run(
        capsys, "preprocess", "demo", "--set", f"data.work_dir='{tmp_path / 'nowork'}'", "--out", tmp_path / "cache"
    )  # fmt: skip
    assert status == 2 and "metadata.parquet: missing; run `rsna prepare` first" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "nowork").exists()
    # train a fold that folds.csv does not have: no fold_99/ left behind
    config = tmp_path / "c.toml"
    config.write_text(
        f'[data]\nwork_dir = "{tiny_work}"\nout_dir = "{tmp_path / "run"}"\n[image]\nsize = 32\n'
        '[model]\nbackbone = "small_cnn"\nweights = "random"\n'
    )
    status, err = run(capsys, "train", config, "--fold", "99")
    assert status == 2 and "`fold` must be one of [0, 1, 2]. Received: fold=99" in err
    assert not (tmp_path / "run" / "fold_99").exists()


def test_label_csv_with_only_a_header(tiny_competition, tmp_path, capsys):
    data = tmp_path / "comp"
    shutil.copytree(tiny_competition.root, data)
    (data / "stage_2_train.csv").write_text("ID,Label\n")
    status, err = run(capsys, "prepare", data, "--out", tmp_path / "w")
    assert status == 2 and "no label rows after the header" in err


def test_a_symlinked_train_folder_is_followed(tiny_competition, tmp_path, capsys):
    data = tmp_path / "comp"
    data.mkdir()
    for item in tiny_competition.root.iterdir():
        (data / item.name).symlink_to(item)  # a Kaggle dataset attached read-only, say
    status, err = run(capsys, "prepare", data, "--out", tmp_path / "w")
    assert status == 0, err
    assert (tmp_path / "w" / "metadata.parquet").exists()


def test_submissions_that_kaggle_would_reject(tiny_competition, tmp_path, capsys):
    sample = tiny_competition.root / "stage_2_sample_submission.csv"
    text = sample.read_text()
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(text.encode("utf-16"))
    status, err = run(capsys, "validate", utf16, "--sample", sample)
    assert status == 2 and "must be UTF-8 text" in err
    lines = text.splitlines()
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("\n".join([*lines, lines[1]]) + "\n")
    status, err = run(capsys, "validate", repeated, "--sample", sample)
    assert (
        status == 2
        and f"ID {lines[1].split(',')[0]} appears 2 times (lines 2, {len(lines) + 1})" in err
    )
    blank = tmp_path / "blank.csv"
    blank.write_text("\n".join([lines[0], lines[1], "", *lines[2:5], "x"]) + "\n")
    status, err = run(capsys, "validate", blank, "--sample", sample)
    assert status == 2 and "line 3: a blank line" in err


def test_label_line_numbers_count_blank_lines(tmp_path):
    from rsna.data.labels import LabelError, read_labels

    rows = ["ID,Label", "ID_0a_epidural,0", "", "", "ID_0a_intraparenchymal,7"]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(LabelError, match="l.csv, line 5: `Label` must be 0 or 1"):
        read_labels(tmp_path / "l.csv")


@pytest.mark.slow
def test_a_tampered_or_truncated_model_file(tiny_work, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[data]\nwork_dir = "{tiny_work}"\nout_dir = "{tmp_path / "run"}"\n[image]\nsize = 32\n'
        '[model]\nbackbone = "small_cnn"\nweights = "random"\n'
    )
    best = tmp_path / "run" / "fold_0" / "best.keras"
    best.parent.mkdir(parents=True)
    for content in (b"PK\x03\x04 not really a zip", b""):
        best.write_bytes(content)
        status, err = run(capsys, "predict", config)
        assert status == 2, err
        assert f"{best}: cannot load the model" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "submission.csv").exists()


def test_an_unexpected_error_is_one_line_that_says_it_is_a_bug(monkeypatch, tmp_path, capsys):
    import rsna.data.folds

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(rsna.data.folds, "make_folds", broken)
    (tmp_path / "w").mkdir()
    monkeypatch.setattr("rsna.data.metadata.read_metadata", lambda w: None)
    monkeypatch.setattr("rsna.data.metadata.read_prepared_labels", lambda w: None)
    status, err = run(capsys, "folds", tmp_path / "w")
    assert status == 1
    assert err.strip().splitlines() == [
        "rsna: internal error, a bug in rsna (ZeroDivisionError: division by zero); "
        "rerun with --debug for the traceback"
    ]
    status, err = run(capsys, "folds", tmp_path / "w", "--debug")
    assert status == 1 and "Traceback (most recent call last)" in err and "broken" in err


@pytest.mark.slow
def test_the_console_is_quiet_unless_verbose(tiny_work, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[data]\nwork_dir = "{tiny_work}"\nout_dir = "{tmp_path / "run"}"\n[image]\nsize = 32\n'
        '[model]\nbackbone = "small_cnn"\nweights = "random"\n[train]\nepochs = 1\nwarmup_epochs = 0\n'
        '[predict]\ntta = ["none"]\n'
    )
    env = {**os.environ, "RSNA_PROGRESS": "0"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)

    def cli(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "rsna.cli", *argv]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)

    quiet = cli("train", str(config), "--fold", "0")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    noise = [line for line in quiet.stderr.splitlines() if any(n in line for n in TF_NOISE)]
    assert noise == [], noise
    assert "fold 0: OOF weighted log loss" in quiet.stdout
    bare = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    loud = cli("train", str(config), "--fold", "0", "--force", "--verbose")
    assert loud.returncode == 0, loud.stderr[-3000:]
    if bare.stderr.strip():  # this machine's TensorFlow says something on start-up
        assert bare.stderr.strip().splitlines()[-1][-40:] in loud.stderr


def test_every_error_is_one_line(monkeypatch, capsys):
    """Library text with newlines (Keras's messages) is flattened into the one error line."""
    import rsna.cli as cli
    from rsna.config import ConfigError

    def fails(args):
        raise ConfigError("the backbone cannot be built:\n  Input 0 of layer\n\n  is incompatible")

    monkeypatch.setattr(cli, "_plan", fails)
    assert main(["plan", "baseline"]) == 2
    err = capsys.readouterr().err
    assert err == "rsna: error: the backbone cannot be built: Input 0 of layer is incompatible\n"


def test_synth_writes_a_cq500_layout_once(tmp_path, capsys):
    argv = ["synth", str(tmp_path / "cq"), "--layout", "cq500", "--patients", "3", "--slices", "4", "--size", "32", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "wrote a synthetic CQ500" in capsys.readouterr().out
    assert (tmp_path / "cq" / "reads.csv").exists() and (tmp_path / "cq" / "planted.csv").exists()
    assert main(argv) == 2
    assert "already holds a reads.csv" in capsys.readouterr().err
