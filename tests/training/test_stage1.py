"""rsna.training.stage1 and the fold machinery end to end on a tiny synthetic competition (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from interrupts import Interrupt, RecordEpochs, StopAfterFirstEpoch

from harness import tiny_experiment
from rsna.config import load_config
from rsna.data.folds import read_folds
from rsna.data.labels import LABELS
from rsna.data.metadata import read_prepared_labels
from rsna.errors import DataWarning
from rsna.evaluate import evaluate
from rsna.runs import read_history
from rsna.submission import validate_submission
from rsna.training.fold import FoldState, TrainError
from rsna.training.precision import local_devices, precision_for
from rsna.training.runner import train as train_folds
from rsna.training.stage1 import predict_test, train_fold

pytestmark = pytest.mark.slow


def tiny_config(work, out, **train):
    return tiny_experiment(
        work,
        out,
        name="tiny",
        image={"context": 1},
        train={"epochs": 2, "patience": 5, **train},
        predict={"tta": ["none", "hflip"]},
    )


@pytest.fixture(scope="module")
def trained(tiny_work, tmp_path_factory):
    config = tiny_config(tiny_work, tmp_path_factory.mktemp("run"), tensorboard=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        results = train_folds(config, verbose=0)
    return config, results


def test_fold_outputs(trained, tiny_work):
    config, results = trained
    # config.toml records the concrete precision that "auto" picked on this machine.
    saved = load_config(config.run_dir / "config.toml")
    assert config.model.precision == "auto"
    assert saved.model.precision == precision_for(local_devices())[0]
    folds = read_folds(tiny_work / "folds.csv")
    assert [r.fold for r in results] == sorted(folds.unique())
    for result in results:
        fold_dir = config.fold_dir(result.fold)
        for name in (
            "best.keras",
            "state.json",
            "history.csv",
            "oof.csv",
            "curves.png",
            "summary.json",
        ):
            assert (fold_dir / name).exists(), name
        assert not (fold_dir / "backup").exists()  # BackupAndRestore cleans up after a finished fit
        oof = pd.read_csv(fold_dir / "oof.csv", index_col="image_id")
        assert sorted(oof.index) == sorted(
            folds.index[folds == result.fold]
        )  # every image, unreadable too
        assert (
            list(oof.columns) == list(LABELS)
            and oof.notna().all().all()
            and ((oof >= 0) & (oof <= 1)).all().all()  # float32 may saturate a rare label
        )
        history = read_history(fold_dir / "history.csv")
        assert len(history) == 2
        logged = tensorboard_scalars(fold_dir / "tensorboard")
        for label in LABELS:
            curve = logged[("validation", f"epoch_log_loss_{label}")]
            np.testing.assert_allclose(
                [curve[0], curve[1]], history[f"val_log_loss_{label}"], rtol=1e-6
            )
        assert sorted(logged[("train", "epoch_learning_rate")]) == [0, 1]
        assert sorted(logged[("validation", "epoch_weighted_log_loss")]) == [0, 1]
    assert (config.run_dir / "config.toml").exists()


def tensorboard_scalars(folder):
    """{(train|validation, tag): {epoch: value}} from the event files under `folder`."""
    import tensorflow as tf

    scalars = {}
    for path in folder.rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                key = (path.parent.name, value.tag)
                scalars.setdefault(key, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(
    tiny_work, tmp_path, monkeypatch
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    config = tiny_config(tiny_work, tmp_path / "run", tensorboard=True)
    with pytest.raises(TrainError, match=r"needs the tensorboard package.*rsna\[tensorboard\]"):
        train_fold(config, 0)
    assert not config.fold_dir(0).exists()


def test_a_finished_fold_is_skipped(trained, capsys):
    config, results = trained
    again = train_fold(config, results[0].fold)
    assert again.summary == results[0].summary
    assert "already trained" in capsys.readouterr().out


def test_a_finished_fold_is_reused_only_for_the_same_experiment(trained, tmp_path, capsys):
    """Notebook 02 once counted a 1-epoch CLI run as its 8-epoch fold: now the changed key
    is named, and --retrain (force) trains it anew. Moved folders are the same experiment."""
    config, results = trained
    copy = tmp_path / "copy"
    shutil.copytree(config.run_dir, copy)
    moved = replace(config, data=replace(config.data, out_dir=copy), train=replace(config.train, workers=2))
    assert train_fold(moved, 0).summary == results[0].summary  # other folders and workers: reused
    shorter = replace(moved, train=replace(moved.train, epochs=1))
    with pytest.raises(TrainError, match=r"another experiment \(train\.epochs: 2 -> 1\)\. Add --retrain"):
        train_fold(shorter, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        again = train_fold(shorter, 0, force=True, verbose=0)
    assert again.summary["epochs_run"] == 1
    assert json.loads((copy / "fold_0" / "experiment.json").read_text())["train.epochs"] == 1


def test_evaluate_and_predict(trained, tiny_work, tiny_competition):
    config, _ = trained
    evaluation = evaluate(config.run_dir, tiny_work)
    labels = read_prepared_labels(tiny_work)
    assert len(evaluation.oof) == len(labels)
    assert set(evaluation.scores.index) == {*LABELS, "weighted"}
    for name in ("oof.csv", "evaluate.json", "roc_pr.png"):
        assert (config.run_dir / name).exists()
    result = predict_test(config)
    corrupt = tiny_competition.manifest["corrupt"]["test"]
    assert result.report["unreadable_given_prior"] == corrupt
    prior = labels[list(LABELS)].mean().to_numpy()
    np.testing.assert_allclose(result.predictions.loc[corrupt[0]].to_numpy(), prior)
    frame = validate_submission(
        result.submission, tiny_competition.root / "stage_2_sample_submission.csv"
    )
    assert len(frame) == 6 * tiny_competition.manifest["images"]["test"]
    assert json.loads((config.run_dir / "predict_report.json").read_text())["folds"] == [
        "fold_0",
        "fold_1",
        "fold_2",
    ]


def test_an_interrupted_fold_resumes_at_the_next_epoch(tiny_work, tmp_path):
    config = tiny_config(tiny_work, tmp_path / "run", epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(Interrupt, match="killed after epoch 0"):
            train_fold(config, 0, verbose=0, callbacks=[StopAfterFirstEpoch()])
        fold_dir = config.fold_dir(0)
        assert (fold_dir / "backup").exists() and FoldState.load(fold_dir)["last_epoch"] == 0
        assert not (fold_dir / "summary.json").exists()
        recorder = RecordEpochs()
        result = train_fold(config, 0, verbose=0, callbacks=[recorder])
    assert recorder.epochs == [1, 2]  # continued, did not start over
    history = pd.read_csv(fold_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]
    assert result.summary["epochs_run"] == 3


def test_the_same_seed_trains_the_same_fold_to_the_bit(trained, tmp_path):
    """train.deterministic: a second run of fold 0 gives the first run's OOF exactly."""
    config, results = trained
    again = replace(config, data=replace(config.data, out_dir=tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = train_fold(again, 0, verbose=0)
    first = next(r for r in results if r.fold == 0)
    pd.testing.assert_frame_equal(result.oof, first.oof, check_exact=True)
    assert (
        result.summary["best_val_weighted_log_loss"] == first.summary["best_val_weighted_log_loss"]
    )
    other = replace(
        again, train=replace(again.train, seed=1), data=replace(again.data, out_dir=tmp_path / "s1")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        moved = train_fold(other, 0, verbose=0)
    assert not np.array_equal(moved.oof.to_numpy(), first.oof.to_numpy())  # the seed matters


def test_seed_run_switches_op_determinism():
    from tensorflow.python.framework import config as tf_config

    from rsna.training.fold import seed_run

    seed_run(0, deterministic=True)
    assert tf_config.is_op_determinism_enabled()
    seed_run(0, deterministic=False)
    assert not tf_config.is_op_determinism_enabled()


def test_unknown_fold(trained):
    config, _ = trained
    with pytest.raises(TrainError, match="`fold` must be one of \\[0, 1, 2\\]. Received: fold=7"):
        train_fold(config, 7, force=True)


MIRRORED = """
import sys, warnings
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from rsna.config import config_from_dict
from rsna.training.models import build_model
from rsna.training.losses import WeightedBCE, WeightedLogLoss
from rsna.training.strategy import choose_strategy
strategy = choose_strategy("mirrored")
config = config_from_dict({"image": {"size": 32, "context": 0}, "model": {"backbone": "small_cnn", "weights": "random"}})
with strategy.scope():
    model = build_model(config)
    model.compile(optimizer="adam", loss=WeightedBCE(), metrics=[WeightedLogLoss()])
x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
y = (np.random.default_rng(1).random((8, 6)) < 0.3).astype("float32")
before = model.get_layer("logits").get_weights()[0].copy()
history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
after = model.get_layer("logits").get_weights()[0]
print("replicas", strategy.num_replicas_in_sync, "changed", bool(np.abs(after - before).max() > 0), "loss", history.history["loss"][0])
"""


def test_mirrored_strategy_over_two_logical_cpus_trains_a_step():
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("replicas 2 changed True loss"), line


def test_cli_train_evaluate_predict_validate(tiny_work, tiny_competition, tmp_path, capsys):
    from rsna.cli import main

    path = tmp_path / "exp.toml"
    path.write_text(
        f'name = "cli"\n[data]\nwork_dir = "{tiny_work}"\nout_dir = "{tmp_path / "run"}"\n'
        '[image]\nsize = 32\ncontext = 0\n[model]\nbackbone = "small_cnn"\nweights = "random"\n'
        '[train]\nepochs = 1\nwarmup_epochs = 0\nbatch_size = 16\n[predict]\ntta = ["none"]\n'
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(["train", str(path), "--fold", "1", "--set", "train.seed=3"]) == 0
        assert "fold 1: OOF weighted log loss" in capsys.readouterr().out
        assert main(["evaluate", str(tmp_path / "run")]) == 0
        out = capsys.readouterr().out
        assert "weighted" in out and "CV weighted log loss" in out and "prior" in out
        assert main(["predict", str(path)]) == 0
        assert "unreadable given prior" in capsys.readouterr().out
    submission = tmp_path / "run" / "submission.csv"
    assert main(["validate", str(submission), "--data-dir", str(tiny_competition.root)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["train", str(path), "--set", "train.epochs=0"]) == 2
    assert "`train.epochs` must be positive" in capsys.readouterr().err
    assert main(["predict", str(path), "--stage", "2"]) == 2


_MIRRORED_PREDICT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from rsna.config import load_config
from rsna.training.stage1 import predict_test
config = load_config(sys.argv[1], overrides={"predict.batch_size": int(sys.argv[2])})
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
runs = {
    "default": predict_test(config, write=False, strategy=tf.distribute.get_strategy()),
    "mirrored": predict_test(config, write=False, strategy=mirrored),
}
frames = {k: r.predictions for k, r in runs.items()}
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "images": len(frames["default"]),
    "same_index": bool(frames["default"].index.equals(frames["mirrored"].index)),
    "diff": float((frames["default"] - frames["mirrored"]).abs().to_numpy().max()),
}))
"""


def test_prediction_on_two_replicas_equals_one_device_for_a_ragged_last_batch(trained):
    # MirroredStrategy over 2 logical CPUs, in a fresh process (devices are fixed at TF's
    # start). Batches of 9 (10 on two replicas): the last is short, and without padding a
    # replica can get an empty share, which MirroredStrategy cannot run.
    config, _ = trained
    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED_PREDICT, str(config.run_dir / "config.toml"), "9"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["same_index"]
    assert result["images"] % 9 != 0 and result["images"] % 10 != 0
    assert result["diff"] <= 1e-5


def test_study_sampling_trains_on_fewer_batches_and_still_predicts_every_slice(tiny_work, tmp_path):
    """train.sampling = "study": each training epoch has the batches of per_study slices a
    series; the fold's OOF still holds every one of its images."""
    import keras

    class Steps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(batch)

    from rsna.data.metadata import read_metadata
    from rsna.data.series import study_epoch_size

    config = tiny_config(tiny_work, tmp_path, epochs=1, sampling="study", per_study=2)
    counter = Steps()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = train_fold(config, 0, callbacks=[counter], verbose=0)
    folds = read_folds(tiny_work / "folds.csv")
    meta = read_metadata(tiny_work)
    train_ids = [i for i in folds.index[folds != 0] if meta.at[i, "readable"]]
    drawn = study_epoch_size(meta, train_ids, per_study=2)
    assert len(counter.steps) == -(-drawn // config.train.batch_size) < len(train_ids) / 16
    oof = pd.read_csv(config.fold_dir(0) / "oof.csv", index_col="image_id")
    assert sorted(oof.index) == sorted(folds.index[folds == 0]) and result.fold == 0


def test_snapshots_predict_the_mean_of_the_last_epochs_models(tiny_work, tmp_path):
    """train.snapshots = 2: the OOF is the mean of the outputs of the last two epochs'
    weights (not best.keras's), and the test is predicted the same way."""
    from rsna.training.fold import snapshot_files
    from rsna.training.generator import DataGenerator
    from rsna.training.models import load_model

    config = tiny_config(tiny_work, tmp_path, epochs=3, snapshots=2)
    config = replace(config, predict=replace(config.predict, tta=("none",)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        train_fold(config, 0, verbose=0)
    files = snapshot_files(config.fold_dir(0))
    assert [p.name for p in files] == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    oof = pd.read_csv(config.fold_dir(0) / "oof.csv", index_col="image_id")
    model = load_model(config.fold_dir(0) / "best.keras")
    summary = json.loads((config.fold_dir(0) / "summary.json").read_text())
    unreadable = set(summary.get("unreadable_given_prior", []))
    readable = [i for i in oof.index if i not in unreadable]
    outputs = []
    for path in files:
        model.load_weights(path)
        gen = DataGenerator.from_config(config, readable, batch_size=16, to_fit=False)
        outputs.append(model.predict(gen, verbose=0))
    mean = np.mean(outputs, axis=0)
    np.testing.assert_allclose(oof.loc[readable].to_numpy(), mean, rtol=1e-5, atol=1e-7)
    assert not np.allclose(outputs[0], outputs[1])  # two different models were averaged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = predict_test(config, write=False)
    assert result.report["snapshots"] == 2 and result.predictions.notna().all().all()


def test_a_resumed_history_keeps_its_columns_when_the_fit_logs_other_metrics(tmp_path):
    """Keras's CSVLogger appends without a header, in the order of the keys it sees: a
    fold resumed by an rsna that logs more metrics would have shifted every value."""
    import keras

    from rsna.training.fold import HistoryLogger

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,9.0,8.0\n")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile("sgd", "mse", metrics=["mae"])  # logs mae and val_mae beside the losses
    x, y = np.ones((4, 2), np.float32), np.full((4, 1), 2.0, np.float32)
    model.fit(x, y, validation_data=(x, y), initial_epoch=1, epochs=2, verbose=0, callbacks=[HistoryLogger(path)])
    history = pd.read_csv(path)
    assert list(history.columns) == ["epoch", "loss", "val_loss"]
    assert history["epoch"].tolist() == [0, 1]
    # The first epoch's training loss with zero weights is mean((2 - 0)^2) = 4.
    assert history.loc[1, "loss"] == pytest.approx(4.0)
    assert history.loc[1, "val_loss"] < 4.0
