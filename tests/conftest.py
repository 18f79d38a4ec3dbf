"""Shared fixtures: a tiny synthetic competition, prepared, with folds and a cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import TINY, TINY_CODEC, TINY_SPEC
from rsna import predictions
from rsna.data.folds import read_folds
from rsna.data.labels import LABELS
from rsna.data.metadata import read_prepared_labels
from rsna.data.synthetic import make_competition
from rsna.errors import DataWarning
from rsna.metrics import sigmoid
from rsna.submission import write_submission
from rsna.training.quiet import tensorflow_defaults

tensorflow_defaults()  # before any test module imports TensorFlow, as the CLI does

os.environ.setdefault("RSNA_PROGRESS", "0")


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic competition of 64x64 slices, made once per test session."""
    return make_competition(tmp_path_factory.mktemp("competition"), TINY, workers=1)


@pytest.fixture(scope="session")
def tiny_work(tiny_competition, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_competition` prepared, with folds and a 32x32 cache (shards of 16 slices)."""
    from rsna.data.cache import build_cache
    from rsna.data.folds import make_folds, write_folds
    from rsna.data.metadata import prepare

    work = tmp_path_factory.mktemp("work")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = prepare(tiny_competition.root, work, workers=1)
    write_folds(
        make_folds(result.metadata, result.labels, n_folds=3, seed=0),
        result.metadata,
        work / "folds.csv",
    )
    build_cache(work, TINY_SPEC, codec=TINY_CODEC, shard_size=16, workers=1)
    return work


def _fake_run(folder, truth, folds, *, noise, seed, sample_csv, test_ids):
    rng = np.random.default_rng(seed)
    z = np.where(truth.to_numpy() > 0, 2.5, -2.5) + rng.normal(0, noise, truth.shape)
    oof = pd.DataFrame(sigmoid(z), index=truth.index, columns=list(LABELS)).rename_axis("image_id")
    for k in sorted(folds.unique()):
        (folder / f"fold_{k}").mkdir(parents=True)
        oof[folds.loc[oof.index] == k].to_csv(folder / f"fold_{k}" / "oof.csv")
    test = pd.DataFrame(
        rng.uniform(0.01, 0.99, (len(test_ids), len(LABELS))), index=test_ids, columns=list(LABELS)
    )
    write_submission(test, sample_csv, folder / "submission.csv")
    return oof, test


@pytest.fixture()
def two_runs(tiny_work, tmp_path):
    """Two fake runs ("a" better than "b") on `tiny_work`'s folds, with submissions."""
    truth = read_prepared_labels(tiny_work)
    folds = read_folds(tiny_work / "folds.csv").loc[truth.index]
    test = predictions.test_images(tiny_work)
    made = [
        _fake_run(
            tmp_path / name,
            truth,
            folds,
            noise=noise,
            seed=seed,
            sample_csv=test.sample_csv,
            test_ids=test.images,
        )
        for name, noise, seed in (("a", 1.0, 1), ("b", 3.0, 2))
    ]
    return tmp_path, truth, folds, made
