"""The shared test harness: tiny synthetic data, crafted DICOM slices and tiny configs.

Fixtures that build on these are in ``conftest.py``; test modules import the helpers
from here (``from harness import write_slice``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsna.data.cache import CacheSpec
from rsna.data.synthetic import GROUPS, SynthConfig, dicom_bytes, encode_hu

__all__ = ["TINY", "TINY_SPEC", "ramp_hu", "tiny_experiment", "write_slice"]

#: The tiny competition of every session: 8 patients, 64x64 slices.
TINY = SynthConfig(patients=8, studies=2, slices=6, size=64, seed=0)
#: The cache the tiny work folder holds.
TINY_SPEC = CacheSpec(size=32)


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
