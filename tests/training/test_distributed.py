"""Training across workers and replicas (rsna.training.distributed, rsna.training.strategy).

The slow tests run what a user runs: two ``rsna train`` processes on 127.0.0.1 with
``TF_CONFIG``, MultiWorkerMirroredStrategy between them; and MirroredStrategy over two
logical CPUs in a fresh process.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import tiny_experiment
from rsna import runs
from rsna.config import dump_config
from rsna.training.fold import split_fold
from rsna.training.generator import DataGenerator, GeneratorError
from rsna.training.strategy import StrategyError, parse_tf_config

TESTS = Path(__file__).resolve().parents[1]


def tf_config(workers: int, index: int, *, kind: str = "worker", chief: bool = False) -> str:
    cluster = {"worker": [f"127.0.0.1:{2000 + k}" for k in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


# ------------------------------------------------------------------ TF_CONFIG


def test_tf_config_names_each_workers_rank_and_the_chief():
    first, second = parse_tf_config(tf_config(2, 0)), parse_tf_config(tf_config(2, 1))
    assert (first.workers, first.rank, first.chief, first.task) == (2, 0, True, "worker:0")
    assert (second.rank, second.chief, second.task) == (1, False, "worker:1")
    chief = parse_tf_config(tf_config(2, 0, kind="chief", chief=True))
    worker0 = parse_tf_config(tf_config(2, 0, chief=True))
    assert (chief.workers, chief.rank, chief.chief) == (3, 0, True)
    assert (worker0.rank, worker0.chief) == (1, False)  # a listed chief outranks worker 0


def test_a_single_task_cluster_is_not_multi_worker():
    assert parse_tf_config(tf_config(1, 0)) is None
    assert parse_tf_config('{"cluster": {"worker": ["[::1]:2222"]}, "task": {"type": "worker", "index": 0}}') is None
    assert parse_tf_config('{"cluster": {}, "task": {}}') is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"cluster": []}', "`cluster`"),
        ('{"cluster": {"worker": "a:1"}}', "`cluster.worker`"),
        ('{"cluster": {"worker": ["a:1", 2]}}', "`cluster.worker`"),
        ('{"cluster": {"chief": ["a:1", "b:2"]}}', "2 chiefs"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', "`task`"),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}',
            "task.type",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
            "index=2",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": true}}',
            "index=True",
        ),
        ('{"cluster": {"worker": ["a:1", "b"]}}', "must be 'host:port'"),
        ('{"cluster": {"worker": ["a:1", "b:0"]}}', "port in 1-65535"),
        ('{"cluster": {"worker": ["a:1", "http://b:2"]}}', "Received: 'http://b:2'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}}', "index=5"),
    ],
)
def test_a_bad_tf_config_is_refused_naming_the_field(text, named):
    with pytest.raises(StrategyError, match="TF_CONFIG") as info:
        parse_tf_config(text)
    assert named in str(info.value)


@given(st.text(max_size=200))
def test_any_tf_config_text_parses_or_is_refused_cleanly(text):
    try:
        cluster = parse_tf_config(text)
    except StrategyError:
        return
    assert cluster is None or 0 <= cluster.rank < cluster.workers


@given(
    workers=st.integers(1, 6),
    chief=st.booleans(),
    data=st.data(),
)
def test_every_task_of_a_cluster_has_its_own_rank(workers, chief, data):
    tasks = [("worker", k) for k in range(workers)] + ([("chief", 0)] if chief else [])
    ranks = set()
    for kind, index in tasks:
        cluster = parse_tf_config(tf_config(workers, index, kind=kind, chief=chief))
        if cluster is None:
            assert len(tasks) == 1
            return
        ranks.add(cluster.rank)
        assert cluster.chief == (cluster.rank == 0)
    assert ranks == set(range(len(tasks)))
    del data


# ------------------------------------------------------------------ replica parts


def _generator(tiny_work, *, shuffle: bool, augment=None, batch_size: int = 8) -> DataGenerator:
    config = tiny_experiment(tiny_work, tiny_work / "unused", name="parts")
    split = split_fold(config, 0)
    return DataGenerator.from_config(
        config,
        split.train_ids,
        split.labels,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=3,
    )


@pytest.mark.parametrize("parts", [1, 2, 4, 8])
def test_the_parts_of_every_batch_are_the_batch_padded_with_zero_weights(tiny_work, parts):
    gen = _generator(tiny_work, shuffle=True)
    share = gen.batch_size // parts
    for index in range(len(gen)):
        x, y = gen.load_batch(index, epoch=2)
        pieces = [gen.load_part(index, part=p, parts=parts, epoch=2) for p in range(parts)]
        for px, py, pw in pieces:
            assert px.shape == (share, *gen.sample_shape) and py.shape == (share, 6)
            assert pw.shape == (share,)
        w = np.concatenate([p[2] for p in pieces])
        real = w > 0
        np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces])[real], x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces])[real], y)
        assert real.sum() == len(x)
        assert not np.concatenate([p[0] for p in pieces])[~real].any()  # padding is zeros
    assert len(gen.image_ids) % gen.batch_size  # the last batch is short: padding was tested


def test_parts_cover_each_image_once_an_epoch_and_augment_by_part(tiny_work):
    gen = _generator(tiny_work, shuffle=True, augment=True)
    first = gen.load_part(0, part=1, parts=2, epoch=0)
    again = gen.load_part(0, part=1, parts=2, epoch=0)
    other = gen.load_part(0, part=1, parts=2, epoch=1)
    np.testing.assert_array_equal(first[0], again[0])  # pure in (seed, epoch, index, part)
    assert not np.array_equal(first[1], other[1])  # another epoch, another order
    seen = []
    for index in range(len(gen)):
        for part in range(2):
            _, _, w = gen.load_part(index, part=part, parts=2, epoch=5)
            share = gen.batch_size // 2
            start = index * gen.batch_size + part * share
            rows = gen.order(5)[start : min(start + share, (index + 1) * gen.batch_size)]
            seen.extend(np.asarray(gen.image_ids)[rows][w[: len(rows)] > 0])
    assert sorted(seen) == sorted(gen.image_ids)


def test_parts_must_divide_the_batch(tiny_work):
    gen = _generator(tiny_work, shuffle=False)
    with pytest.raises(GeneratorError, match="Received: part=0, parts=3"):
        gen.load_part(0, part=0, parts=3, epoch=0)
    with pytest.raises(GeneratorError, match="part=2, parts=2"):
        gen.load_part(0, part=2, parts=2, epoch=0)
    with pytest.raises(IndexError):
        gen.load_part(len(gen), part=0, parts=2, epoch=0)


def test_padded_and_masked_batches_give_the_unpadded_metric(tiny_work):
    import tensorflow as tf

    from rsna.training.distributed import replica_batches
    from rsna.training.fold import compile_fold_model
    from rsna.training.models import build_model

    gen = _generator(tiny_work, shuffle=False, batch_size=16)
    assert len(gen.image_ids) % 16
    config = tiny_experiment(tiny_work, tiny_work / "unused", name="parts")
    model = compile_fold_model(
        build_model(config, prior=np.full(6, 0.2)), learning_rate=1e-3, label_weights=[1] * 6
    )
    plain = model.evaluate(gen, verbose=0, return_dict=True)["weighted_log_loss"]
    strategy = tf.distribute.get_strategy()
    padded = model.evaluate(
        replica_batches(strategy, gen), steps=len(gen), verbose=0, return_dict=True
    )["weighted_log_loss"]
    assert padded == pytest.approx(plain, abs=1e-6)


# ------------------------------------------------------------------ MirroredStrategy

MIRRORED = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    sys.path.insert(0, {tests!r})
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pathlib import Path
    from harness import tiny_experiment
    from rsna.training.stage1 import train_fold
    from rsna.training.strategy import choose_strategy

    strategy = choose_strategy("mirrored")
    config = tiny_experiment(
        Path({work!r}), Path({out!r}), name="mirrored", image={{"context": 0}},
        train={{"epochs": 2, "patience": 10}}, predict={{"tta": ["none"]}},
    )
    train_fold(config, 0, strategy=strategy, verbose=0)
    """
)


@pytest.mark.slow
def test_mirrored_training_validates_the_model_it_saves(tiny_work, tmp_path):
    """Two replicas: validation (sharded, padded) scores exactly the saved best model,
    whose batch-norm statistics are the replicas' mean."""
    code = MIRRORED.format(tests=str(TESTS), work=str(tiny_work), out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_validation_matches_best(tiny_work, tmp_path / "fold_0", name="mirrored")


def _check_validation_matches_best(work: Path, fold_dir: Path, *, name: str) -> None:
    from rsna.training.fold import FoldState, compile_fold_model
    from rsna.training.models import load_model

    config = tiny_experiment(work, fold_dir.parent, name=name, image={"context": 0})
    split = split_fold(config, 0)
    gen = DataGenerator.from_config(config, split.valid_ids, split.labels, batch_size=16)
    best = compile_fold_model(
        load_model(fold_dir / runs.BEST_MODEL), learning_rate=1e-3, label_weights=[1] * 6
    )
    state = FoldState.load(fold_dir)
    history = pd.read_csv(fold_dir / runs.HISTORY)
    logged = history.loc[history["epoch"] == state["best_epoch"], "val_weighted_log_loss"]
    local = best.evaluate(gen, verbose=0, return_dict=True)["weighted_log_loss"]
    assert float(logged.iloc[0]) == pytest.approx(local, abs=1e-5)


# ------------------------------------------------------------------ two workers

WORKER = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    warnings.simplefilter("ignore")
    import numpy as np
    from rsna.cli import main
    from rsna.training.generator import DataGenerator

    record, slow = os.environ["RSNA_TEST_RECORD"], os.environ.get("RSNA_TEST_SLOW")
    original = DataGenerator.load_part

    def spy(self, index, *, part, parts, epoch):
        out = original(self, index, part=part, parts=parts, epoch=epoch)
        if self.shuffle:  # the training generator: note the images this worker read
            share = self.batch_size // parts
            start = index * self.batch_size + part * share
            rows = self.order(epoch)[start : min(start + share, (index + 1) * self.batch_size)]
            ids = np.asarray(self.image_ids)[rows][out[2][: len(rows)] > 0].tolist()
            with open(record, "a") as fh:
                fh.write(json.dumps({{"epoch": epoch, "ids": ids}}) + "\\n")
            if slow and epoch >= 1:
                time.sleep(0.5)
        return out

    DataGenerator.load_part = spy
    sys.exit(main(["train", {toml!r}, "--fold", "0"]))
    """
)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(toml: Path, records: Path, *, slow: bool = False) -> list[subprocess.Popen]:
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {
            **__import__("os").environ,
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
            "RSNA_TEST_RECORD": str(records / f"worker{index}.jsonl"),
            "RSNA_PROGRESS": "0",
        }
        if slow:
            env["RSNA_TEST_SLOW"] = "1"
        code = WORKER.format(toml=str(toml))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """Each process's status, stdout and stderr; a process still running after 300 s is a
    hang: every process is killed and the test fails."""
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            out.append((proc.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        tails = [proc.communicate()[1][-2000:] for proc in procs]
        pytest.fail(f"a worker hung; their stderr: {tails}")
    return out


def _seen(path: Path, epochs: int) -> dict[int, list[str]]:
    by_epoch: dict[int, list[str]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["epoch"] < epochs:  # the endless stream may read ahead past the last epoch
            by_epoch.setdefault(entry["epoch"], []).extend(entry["ids"])
    return by_epoch


@pytest.fixture
def two_worker_run(tiny_work, tmp_path):
    def make(name: str) -> tuple[Path, Path]:
        config = tiny_experiment(
            tiny_work,
            tmp_path / name,
            name=name,
            image={"context": 0},
            train={"epochs": 3, "patience": 10},
            predict={"tta": ["none"]},
        )
        toml = tmp_path / f"{name}.toml"
        dump_config(config, toml)
        records = tmp_path / f"{name}-records"
        records.mkdir()
        return toml, records

    return make


@pytest.mark.slow
def test_two_workers_train_one_fold_each_reading_its_own_share(tiny_work, tmp_path, two_worker_run):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("rsna-worker*"))
    toml, records = two_worker_run("straight")
    (chief, worker) = _finish(_start_workers(toml, records))
    assert chief[0] == 0, chief[2][-3000:]
    assert worker[0] == 0, worker[2][-3000:]
    assert "2 replica(s) on 2 worker(s); this is worker 0 (chief)" in chief[1]
    assert "trained 1 stage-1 fold(s)" in chief[1]
    assert "worker:1: trained 1 fold(s) with the chief" in worker[1]

    out = tmp_path / "straight"
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "fold_0"]
    written = {p.name for p in (out / "fold_0").iterdir()}
    assert {runs.BEST_MODEL, runs.OOF, runs.HISTORY, runs.SUMMARY, runs.CURVES} <= written
    assert runs.BACKUP not in written  # removed at the end of the fit
    assert set(Path(tempfile.gettempdir()).glob("rsna-worker*")) == before

    config = tiny_experiment(tiny_work, out, name="straight", image={"context": 0})
    split = split_fold(config, 0)
    train = DataGenerator.from_config(config, split.train_ids, split.labels)
    a, b = _seen(records / "worker0.jsonl", 3), _seen(records / "worker1.jsonl", 3)
    for epoch in range(3):  # sets: Keras reads one batch ahead with an iterator it discards
        assert not set(a[epoch]) & set(b[epoch])
        assert set(a[epoch]) | set(b[epoch]) == set(train.image_ids)
    assert a[0] != a[1]  # a new shuffle each epoch
    _check_validation_matches_best(tiny_work, out / "fold_0", name="straight")


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_and_both_resume_where_they_were(
    tiny_work, tmp_path, two_worker_run
):
    toml, records = two_worker_run("killed")
    procs = _start_workers(toml, records, slow=True)
    metadata = tmp_path / "killed" / "fold_0" / runs.BACKUP / runs.BACKUP_METADATA
    deadline = time.monotonic() + 240
    while not metadata.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metadata.exists(), "no epoch finished"
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (chief, worker) = _finish(procs)
    assert worker[0] == -signal.SIGKILL
    assert chief[0] == 2, chief[2][-3000:]
    assert "rsna: error: worker 0 of 2 lost the others during training" in chief[2]
    assert time.monotonic() - killed_at < 120
    assert not (tmp_path / "killed" / "fold_0" / runs.SUMMARY).exists()

    records2 = tmp_path / "resumed-records"
    records2.mkdir()
    (chief, worker) = _finish(_start_workers(toml, records2))
    assert chief[0] == 0 and worker[0] == 0, chief[2][-3000:] + worker[2][-3000:]
    seen = _seen(records2 / "worker0.jsonl", 3)
    assert 0 not in seen and 2 in seen  # resumed after epoch 0, not from the start
    history = pd.read_csv(tmp_path / "killed" / "fold_0" / runs.HISTORY)
    assert history["epoch"].tolist() == [0, 1, 2]
