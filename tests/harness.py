"""The shared test harness: tiny synthetic data, crafted DICOM slices and tiny configs.

Fixtures that build on these are in ``conftest.py``; test modules import the helpers
from here (``from harness import write_slice``).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, settings
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from rsna.data.codecs import codec_for
from rsna.data.dicom import MAX_ASPECT, MAX_DIMENSION, MAX_RESCALE, quiet_rsna_uids
from rsna.data.sources import ImageSpec
from rsna.data.synthetic import GROUPS, SynthConfig, dicom_bytes, encode_hu

__all__ = [
    "ENCODINGS",
    "TF_NOISE",
    "TINY",
    "TINY_CODEC",
    "TINY_SPEC",
    "encode",
    "fuzz_settings",
    "prepared_competition",
    "ramp_hu",
    "reference",
    "replace_value",
    "tiny_experiment",
    "write_slice",
]

def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: in CI a fixed, derandomised set of `examples`
    (the same on every machine); ``RSNA_FUZZ_EXAMPLES=N`` makes it a long campaign of N
    fresh random examples."""
    long_run = int(os.environ.get("RSNA_FUZZ_EXAMPLES", "0"))
    return settings(
        max_examples=long_run or examples,
        derandomize=not long_run,
        database=None,
        deadline=None,  # hang guards bound time; no timing assertion
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


#: Markers of TensorFlow's start-up lines, which rsna keeps off the console.
TF_NOISE = ("I0000", "E0000", "W0000", "absl::InitializeLog", "oneDNN", "cuInit", "cuda")
#: The tiny competition of every session: 8 patients, 64x64 slices.
TINY = SynthConfig(patients=8, studies=2, slices=6, size=64, seed=0)
#: The cache the tiny work folder holds.
TINY_SPEC = ImageSpec(size=32)
#: The codec of the tiny work folder's store.
TINY_CODEC = codec_for("lossless")


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
        "model": {"backbone": "small_cnn", "weights": "random"},
        "train": {"batch_size": 16, "warmup_epochs": 0, "deterministic": True},
        "predict": {"batch_size": 16},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return config_from_dict({"name": name, **base})


def prepared_competition(folder: Path, *, seed: int, patients: int = 6):
    """A small synthetic competition in `folder`/comp, prepared into `folder`/work with 2
    folds and the tiny store: (competition, work folder, prepare result)."""
    from rsna.data.cache import build_cache
    from rsna.data.folds import make_folds, write_folds
    from rsna.data.metadata import prepare
    from rsna.data.synthetic import make_competition
    from rsna.errors import DataWarning

    synth = SynthConfig(patients=patients, studies=1, slices=5, size=48, seed=seed)
    competition = make_competition(folder / "comp", synth, workers=1)
    work = folder / "work"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        prepared = prepare(competition.root, work, workers=1)
    folds = make_folds(prepared.metadata, prepared.labels, n_folds=2, seed=0)
    write_folds(folds, prepared.metadata, work / "folds.csv")
    build_cache(work, TINY_SPEC, codec=TINY_CODEC, workers=1)
    return competition, work, prepared


# ------------------------------------------------------------- DICOM against pydicom


def reference(path: Path) -> np.ndarray | str:
    """pydicom's HU for `path`, computed here independently; or, as a string, why rsna
    must refuse it (pydicom fails, or the file is outside rsna's documented scope)."""
    data = path.read_bytes()
    if len(data) < 132 or data[128:132] != b"DICM":
        return "not a DICOM Part 10 file"
    try:
        with warnings.catch_warnings(), quiet_rsna_uids():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
            tags = {k: ds.get(k) for k in ("SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "NumberOfFrames")}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - any pydicom failure means rsna must refuse too
        return f"pydicom fails: {type(exc).__name__}"
    rows, cols = arr.shape[-2:] if arr.ndim >= 2 else (0, 0)
    try:
        slope = float(tags["RescaleSlope"]) if tags["RescaleSlope"] not in (None, "") else 1.0
        intercept = float(tags["RescaleIntercept"]) if tags["RescaleIntercept"] not in (None, "") else 0.0  # fmt: skip
    except (TypeError, ValueError):
        return "pydicom gives a rescale that is not one number"
    frames = tags["NumberOfFrames"]
    out_of_scope = {
        "not one frame": arr.ndim != 2 or frames not in (None, "", 1, "1"),
        "not grayscale": tags["SamplesPerPixel"] != 1
        or tags["PhotometricInterpretation"] not in ("MONOCHROME1", "MONOCHROME2"),
        "bits": tags["BitsAllocated"] not in (8, 16, 32),
        "dimensions": not (0 < rows <= MAX_DIMENSION and 0 < cols <= MAX_DIMENSION)
        or max(rows, cols) > MAX_ASPECT * min(rows, cols),
        "rescale": not (0 < slope <= MAX_RESCALE and abs(intercept) <= MAX_RESCALE),
    }
    reasons = [name for name, bad in out_of_scope.items() if bad]
    if reasons:
        return f"out of scope: {reasons}"
    stored = arr.astype(arr.dtype.newbyteorder("="))
    if tags["BitsStored"] == 12 and tags["PixelRepresentation"] == 0 and intercept > -100:
        fixed = stored.astype(np.int32) + 1000  # the bad-intercept rule, written out again
        fixed[fixed >= 4096] -= 4096
        stored, intercept = fixed, -1000.0
    hu = stored.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    return hu


ENCODINGS = {
    "explicit LE": ExplicitVRLittleEndian,
    "implicit LE": ImplicitVRLittleEndian,
    "big endian": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "RLE": RLELossless,
}


def encode(ds: pydicom.Dataset, path: Path, encoding: str) -> Path:
    """Save `ds` (native little-endian pixel data) in one of the five encodings."""
    syntax = ENCODINGS[encoding]
    with warnings.catch_warnings(), quiet_rsna_uids():
        warnings.simplefilter("ignore")
        if encoding == "RLE":
            ds.compress(RLELossless, encoding_plugin="pydicom")
        elif encoding == "big endian":
            dtype = ">i2" if ds.PixelRepresentation else ">u2"
            raw = np.frombuffer(ds.PixelData, "<i2" if ds.PixelRepresentation else "<u2")
            ds.PixelData = raw.astype(dtype).tobytes()
            ds.file_meta.TransferSyntaxUID = syntax
            pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
            return path
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, implicit_vr=encoding == "implicit LE", enforce_file_format=True)
    return path


def replace_value(data: bytes, group: int, number: int, vr: bytes, value: bytes) -> bytes:
    """`data` with the value of the first (group,number) element of explicit VR little
    endian replaced, bytes and length (pydicom validates values, so a hostile file is
    written by hand)."""
    head = struct.pack("<HH2s", group, number, vr)
    at = data.index(head)
    (length,) = struct.unpack_from("<H", data, at + 6)
    return data[:at] + head + struct.pack("<H", len(value)) + value + data[at + 8 + length :]
