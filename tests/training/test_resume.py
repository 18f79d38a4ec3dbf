"""A fold killed with SIGKILL mid-epoch and rerun ends exactly as an uninterrupted run (slow).

Each run is a fresh process, as a user's would be: one runs three epochs through; the
other is killed in the middle of epoch 1 (after its epoch-0 backup), then rerun. The
weights of best.keras and of the epoch snapshots, history.csv, state.json and oof.csv
must be equal to the bit.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from rsna import runs
from rsna.training.fold import SeedState
from rsna.training.models import load_model

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, warnings
    from pathlib import Path
    warnings.simplefilter("ignore")
    sys.path.insert(0, {tests!r})
    import keras
    from harness import tiny_experiment
    from rsna.training.stage1 import train_fold

    config = tiny_experiment(
        Path({work!r}), Path({out!r}), name="resume", image={{"context": 0}},
        model={{"dropout": 0.5}}, train={{"epochs": 3, "patience": 10, "snapshots": 2}},
        predict={{"tta": ["none"]}},
    )

    class KillMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:  # the epoch has more batches than one
                os.kill(os.getpid(), signal.SIGKILL)

    train_fold(config, 0, verbose=0, callbacks=[KillMidEpoch()] if {kill} else [])
    """
)


def run_fold(work: Path, out: Path, *, kill: bool) -> subprocess.CompletedProcess:
    code = SCRIPT.format(tests=str(TESTS), work=str(work), out=str(out), kill=kill)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_a_fold_killed_mid_epoch_resumes_to_the_uninterrupted_result(tiny_work, tmp_path):
    straight = run_fold(tiny_work, tmp_path / "straight", kill=False)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_fold(tiny_work, tmp_path / "killed", kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    fold = tmp_path / "killed" / "fold_0"
    assert (fold / runs.BACKUP).exists() and not (fold / runs.SUMMARY).exists()
    resumed = run_fold(tiny_work, tmp_path / "killed", kill=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = tmp_path / "straight" / "fold_0", fold
    for name in (runs.HISTORY, runs.STATE, runs.SEEDS, runs.OOF):
        assert (a / name).read_text() == (b / name).read_text(), name
    # the snapshots of the last two epochs: the same files, the same weights
    from rsna.training.fold import snapshot_files

    names = [p.name for p in snapshot_files(a)]
    assert names == [p.name for p in snapshot_files(b)] == ["epoch_001.weights.h5", "epoch_002.weights.h5"]  # fmt: skip
    for x, y in zip(snapshot_files(a), snapshot_files(b), strict=True):
        model = load_model(a / runs.BEST_MODEL)
        model.load_weights(x)
        first = model.get_weights()
        model.load_weights(y)
        for u, v in zip(first, model.get_weights(), strict=True):
            np.testing.assert_array_equal(u, v)
    weights_a = load_model(a / runs.BEST_MODEL).get_weights()
    weights_b = load_model(b / runs.BEST_MODEL).get_weights()
    assert len(weights_a) == len(weights_b) > 0
    for x, y in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_seed_state_puts_back_the_previous_epochs_draws(tmp_path):
    """What the resume test relies on, shown directly: a fresh model (a resumed run)
    draws, from the second epoch on, the masks the first model drew."""

    def model_and_state():
        inputs = keras.Input((64,))
        model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
        state = SeedState(tmp_path)
        state.set_model(model)
        return model, state

    ones = np.ones((1, 64), "float32")
    first, state = model_and_state()
    state.on_epoch_begin(0)
    first(ones, training=True)  # epoch 0 draws
    state.on_epoch_end(0)
    state.on_epoch_begin(1)
    expected = keras.ops.convert_to_numpy(first(ones, training=True))  # epoch 1's first mask
    resumed, state = model_and_state()  # a new process: its generator starts over
    state.on_epoch_begin(1)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(resumed(ones, training=True)), expected
    )
    assert (tmp_path / runs.SEEDS).exists()
