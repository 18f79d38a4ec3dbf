"""Shared fixtures: a tiny synthetic competition, prepared, with folds and a cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from harness import TINY, TINY_CODEC, TINY_SPEC
from rsna.data.synthetic import make_competition
from rsna.errors import DataWarning

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
