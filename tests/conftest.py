"""Shared fixtures: a tiny synthetic competition and crafted DICOM files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from rsna.cache import CacheSpec
from rsna.errors import DataWarning
from rsna.synthetic import GROUPS, SynthConfig, dicom_bytes, encode_hu, make_competition

os.environ.setdefault("RSNA_PROGRESS", "0")

TINY = SynthConfig(patients=8, studies=2, slices=6, size=64, seed=0)
TINY_SPEC = CacheSpec(size=32)


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic competition of 64x64 slices, made once per test session."""
    return make_competition(tmp_path_factory.mktemp("competition"), TINY, workers=1)


@pytest.fixture(scope="session")
def tiny_work(tiny_competition, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_competition` prepared, with folds and a 32x32 cache (shards of 16 slices)."""
    from rsna.cache import build_cache
    from rsna.folds import make_folds, write_folds
    from rsna.metadata import prepare

    work = tmp_path_factory.mktemp("work")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = prepare(tiny_competition.root, work, workers=1)
    write_folds(
        make_folds(result.metadata, result.labels, n_folds=3, seed=0),
        result.metadata,
        work / "folds.csv",
    )
    build_cache(work, TINY_SPEC, shard_size=16, workers=1)
    return work


def write_slice(
    path: Path,
    hu: np.ndarray,
    *,
    group: str = "s16",
    bad_intercept: bool = False,
    image_id: str = "ID_0123abcd",
    z: float = 10.0,
) -> Path:
    """Write `hu` as a DICOM slice the way header group `group` stores it."""
    g = GROUPS[group]
    stored, intercept = encode_hu(hu, group=g, bad_intercept=bad_intercept)
    path.write_bytes(
        dicom_bytes(
            stored,
            group=g,
            intercept=intercept,
            image_id=image_id,
            patient_id="ID_patient01",
            study_uid="ID_study0001",
            series_uid="ID_series001",
            instance_number=1,
            position=(-115.0, -115.0, z),
            pixel_spacing=0.5,
        )
    )
    return path


def ramp_hu(
    rows: int = 16, cols: int = 16, *, low: float = -1000.0, high: float = 1500.0
) -> np.ndarray:
    """A deterministic HU ramp covering air to bone."""
    return np.linspace(low, high, rows * cols, dtype=np.float32).reshape(rows, cols)


def tiny_experiment(work: Path, out: Path, *, name: str, **sections: dict):
    """A small-CNN experiment at 32x32 on `tiny_work`; `sections` update the base tables."""
    from rsna.config import config_from_dict

    base = {
        "data": {"work_dir": str(work), "out_dir": str(out)},
        "image": {"size": 32},
        "model": {"backbone": "small_cnn"},
        "train": {"batch_size": 16, "warmup_epochs": 0},
        "predict": {"batch_size": 16},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return config_from_dict({"name": name, **base})
