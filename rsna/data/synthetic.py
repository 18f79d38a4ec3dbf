"""A synthetic RSNA competition: phantom head CTs with planted bleeds, in Kaggle's layout.

:func:`make_competition` writes::

    OUT/stage_2_train/ID_<hex>.dcm          labelled slices
    OUT/stage_2_test/ID_<hex>.dcm           unlabelled slices
    OUT/stage_2_train.csv                   ID,Label, six rows per image, some rows repeated
    OUT/stage_2_sample_submission.csv       ID,Label with Label 0.5
    OUT/synthetic_manifest.json             what was planted: the quirks, by image ID
    OUT/synthetic_test_labels.csv           the hidden test labels, to score a submission

Phantoms: air at -1000 HU, scalp, a skull ring of 1000-1800 HU, brain at 30-40 HU with a
smooth texture, ventricles at 5-15 HU, Gaussian noise and, in some header groups, the
outside-field padding of real scanners. Bleeds are 3-D blobs of 50-90 HU that span
adjacent slices; a slice's label is 1 for a subtype when that subtype's blob covers at
least :data:`MIN_BLEED_FRACTION` of it (and 4 pixels), and ``any`` is their OR. At a
blob's ends along z the bleed fills only part of the slice's thickness and looks faint
(:func:`partial_volume`): those slices are positive but best recognised from their
neighbours, which is what the series model of stage 2 is for.

The real data's quirks are all planted: bad-intercept files, the three header groups
(12-bit unsigned, 12-bit signed, 16-bit signed), non-square images, truncated pixel data
(one train and one test file) and repeated label rows. The same config gives the same
bytes. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files
from rsna.data.dicom import EXPLICIT_VR_LE, IMPLICIT_VR_LE, MAX_DIMENSION, quiet_rsna_uids
from rsna.data.labels import LABELS, SUBTYPES, to_long
from rsna.data.paths import SAMPLE_CSV, TEST_DIRS, TRAIN_CSV, TRAIN_DIRS
from rsna.errors import RsnaError
from rsna.parallel import parallel_map

__all__ = [
    "BAD_INTERCEPT",
    "CT_IMAGE_STORAGE",
    "GROUPS",
    "MANIFEST",
    "MIN_BLEED_FRACTION",
    "PADDING_HU",
    "TEST_DIR",
    "TEST_LABELS",
    "TIP_CONTRAST",
    "TIP_START",
    "TRAIN_DIR",
    "Bleed",
    "Head",
    "HeaderGroup",
    "SeriesPlan",
    "SynthConfig",
    "SynthError",
    "SynthResult",
    "dicom_bytes",
    "encode_hu",
    "expected_hu",
    "make_competition",
    "partial_volume",
    "plan",
    "render_slice",
]

#: A slice is positive for a subtype when its blob covers this share of the image.
MIN_BLEED_FRACTION = 2.5e-4
#: Partial volume at a bleed's ends along z: the contrast falls linearly once the blob's
#: cross-section has shrunk below TIP_START of its widest, down to TIP_CONTRAST.
TIP_START = 0.75
TIP_CONTRAST = 0.25
PADDING_HU = -3024.0  # outside the scanner's field of view: stored -2000 at intercept -1024
TRAIN_DIR, TEST_DIR = TRAIN_DIRS[0], TEST_DIRS[0]
MANIFEST, TEST_LABELS = "synthetic_manifest.json", "synthetic_test_labels.csv"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# Relative frequency of each planted subtype; epidural is the rarest, as in the real data.
_SUBTYPE_WEIGHTS = {
    "epidural": 0.06,
    "intraparenchymal": 0.26,
    "intraventricular": 0.18,
    "subarachnoid": 0.24,
    "subdural": 0.26,
}


#: (lowest, highest) of each size option: the real competition has about 19,000
#: patients and 20 to 60 slices per series; a slice is at most MAX_DIMENSION wide, and
#: a few synthetic series are 1.25 times wider than `size`.
_BOUNDS = {
    "patients": (2, 100_000),
    "studies": (1, 10),
    "slices": (3, 512),
    "size": (32, int(MAX_DIMENSION / 1.25)),
}


class SynthError(RsnaError):
    """Bad options for the synthetic competition."""


@dataclass(frozen=True)
class SynthConfig:
    """Options of :func:`make_competition`.

    Attributes:
        patients: number of patients.
        studies: most studies per patient (each gets 1 to `studies`; one series each).
        slices: slices per series.
        size: rows (and columns) of a regular image; a few series are wider.
        seed: the seed of every random choice.
        test_fraction: share of patients put in the test set.
        bleed_fraction: share of series with at least one bleed.
    """

    patients: int = 20
    studies: int = 2
    slices: int = 20
    size: int = 512
    seed: int = 0
    test_fraction: float = 0.25
    bleed_fraction: float = 0.6

    def __post_init__(self) -> None:
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SynthError(
                    f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
                )
            if value > high:
                raise SynthError(f"`{name}` must be at most {high}. Received: {name}={value!r}")
        for name in ("test_fraction", "bleed_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SynthError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")


@dataclass(frozen=True)
class HeaderGroup:
    """How one institution stores pixels: (BitsStored, PixelRepresentation) and friends."""

    name: str
    bits_stored: int
    pixel_representation: int
    intercept: float
    transfer_syntax: str
    window_center: str  # DS text as written; a backslash makes it multi-valued
    window_width: str

    @property
    def stored_range(self) -> tuple[int, int]:
        if self.pixel_representation:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


GROUPS: dict[str, HeaderGroup] = {
    "s16": HeaderGroup("s16", 16, 1, -1024.0, EXPLICIT_VR_LE, "40", "80"),
    "s12": HeaderGroup("s12", 12, 1, -1024.0, IMPLICIT_VR_LE, "00036\\00036", "00080\\00080"),
    "u12": HeaderGroup("u12", 12, 0, -1024.0, EXPLICIT_VR_LE, "30", "80"),
}
_GROUP_SHARES = {"s16": 0.5, "s12": 0.3, "u12": 0.2}
BAD_INTERCEPT = 1.0  # the header value of the bad-intercept files


@dataclass(frozen=True)
class Bleed:
    """One planted bleed; positions are in head-radius units around the head's centre."""

    subtype: str
    center_slice: float
    half_span: float  # slices from the centre to the end of the blob
    angle: float  # where on the skull (epidural, subdural, subarachnoid), radians
    x: float  # blob centre (intraparenchymal), head units
    y: float
    radius: float  # in-plane size at the centre slice, head units
    hu: float


@dataclass(frozen=True)
class Head:
    """Shape of a patient's head phantom."""

    cx: float
    cy: float
    ax: float
    ay: float
    tilt: float
    bone_hu: float
    phase: float


@dataclass(frozen=True)
class SeriesPlan:
    """Everything needed to render and write one series, made up front by :func:`plan`."""

    index: int
    split: str
    patient_id: str
    study_uid: str
    series_uid: str
    image_ids: tuple[str, ...]
    group: str
    bad_intercept: bool
    rows: int
    cols: int
    z0: float
    dz: float
    instance_reversed: bool
    head: Head
    bleeds: tuple[Bleed, ...]
    seed: tuple[int, ...] = field(default=())


# ----------------------------------------------------------------------------- planning


class _Ids:
    """Unique lowercase-hex IDs from one generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.seen = rng, set()

    def new(self, digits: int) -> str:
        while True:
            value = f"ID_{int(self.rng.integers(0, 16**digits)):0{digits}x}"
            if value not in self.seen:
                self.seen.add(value)
                return value


def plan(config: SynthConfig) -> list[SeriesPlan]:
    """Lay out patients, studies, series and bleeds. Pure and deterministic."""
    rng = np.random.default_rng([config.seed, 0])
    ids = _Ids(rng)
    n_test = int(round(config.patients * config.test_fraction))
    n_test = min(max(n_test, 1 if config.test_fraction > 0 else 0), config.patients - 1)
    test_patients = set(rng.choice(config.patients, size=n_test, replace=False).tolist())
    groups = list(_GROUP_SHARES)
    series: list[SeriesPlan] = []
    for p in range(config.patients):
        patient_id = ids.new(9)
        split = "test" if p in test_patients else "train"
        group = str(rng.choice(groups, p=list(_GROUP_SHARES.values())))
        head = _plan_head(rng)
        bleeds: tuple[Bleed, ...] = ()
        for s in range(int(rng.integers(1, config.studies + 1))):
            if s == 0 or rng.random() > 0.7:  # a follow-up study mostly shows the same bleeds
                bleeds = _plan_bleeds(rng, config, group)
            rows = config.size
            cols = config.size + config.size // 4 if rng.random() < 0.06 else config.size
            series.append(
                SeriesPlan(
                    index=len(series),
                    split=split,
                    patient_id=patient_id,
                    study_uid=ids.new(10),
                    series_uid=ids.new(10),
                    image_ids=tuple(ids.new(9) for _ in range(config.slices)),
                    group=group,
                    bad_intercept=group == "u12" and rng.random() < 0.4,
                    rows=rows,
                    cols=cols,
                    z0=float(rng.uniform(-150.0, 50.0)),
                    dz=float(rng.choice([4.5, 5.0, 5.0, 6.0])),
                    instance_reversed=bool(rng.random() < 0.3),
                    head=head,
                    bleeds=bleeds,
                    seed=(config.seed, 1, len(series)),
                )
            )
    return _guarantee_quirks(series, config)


def _plan_head(rng: np.random.Generator) -> Head:
    return Head(
        cx=float(rng.uniform(-0.05, 0.05)),
        cy=float(rng.uniform(-0.05, 0.05)),
        ax=float(rng.uniform(0.66, 0.74)),
        ay=float(rng.uniform(0.80, 0.88)),
        tilt=float(rng.uniform(-0.15, 0.15)),
        bone_hu=float(rng.uniform(1200.0, 1500.0)),
        phase=float(rng.uniform(0.0, 2 * math.pi)),
    )


def _plan_bleeds(rng: np.random.Generator, config: SynthConfig, group: str) -> tuple[Bleed, ...]:
    # Positive rates differ between header groups in the real data; so they do here.
    fraction = min(1.0, config.bleed_fraction * (1.25 if group == "u12" else 1.0))
    if rng.random() >= fraction:
        return ()
    n = config.slices
    bleeds = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        subtype = str(rng.choice(SUBTYPES, p=list(_SUBTYPE_WEIGHTS.values())))
        if subtype == "intraventricular":  # ventricles exist in the middle of the head only
            center = rng.uniform(0.45, 0.62) * (n - 1)
        else:
            center = rng.uniform(0.25, 0.85) * (n - 1)
        angle = float(rng.uniform(0, 2 * math.pi))
        radius = float(rng.uniform(0.15, 0.28))
        bleeds.append(
            Bleed(
                subtype=subtype,
                center_slice=float(center),
                half_span=float(rng.uniform(1.6, 3.6)),
                angle=angle,
                x=float(0.35 * math.cos(angle) * rng.uniform(0.3, 1.0)),
                y=float(0.35 * math.sin(angle) * rng.uniform(0.3, 1.0)),
                radius=radius,
                hu=float(
                    rng.uniform(55.0, 85.0)
                    if subtype != "subarachnoid"
                    else rng.uniform(50.0, 65.0)
                ),
            )
        )
    return tuple(bleeds)


def _guarantee_quirks(series: list[SeriesPlan], config: SynthConfig) -> list[SeriesPlan]:
    """Make sure the train split has a bad-intercept series, a non-square series, and
    (when it has enough bleeding series) every subtype."""
    train = [s.index for s in series if s.split == "train"]
    for subtype in SUBTYPES:
        present = {b.subtype for i in train for b in series[i].bleeds}
        donors = [
            i
            for i in train
            if series[i].bleeds
            and sum(
                b.subtype == series[i].bleeds[0].subtype for j in train for b in series[j].bleeds
            )
            > 1
        ]
        if subtype not in present and donors:
            i = donors[-1]
            first = series[i].bleeds[0]
            centre = (
                0.53 * (config.slices - 1) if subtype == "intraventricular" else first.center_slice
            )
            changed = replace(first, subtype=subtype, center_slice=centre)
            series[i] = replace(series[i], bleeds=(changed, *series[i].bleeds[1:]))
    if not any(series[i].bad_intercept for i in train):
        i = train[-1]
        series[i] = replace(series[i], group="u12", bad_intercept=True)
    if not any(series[i].cols != series[i].rows for i in train):
        i = train[0]
        series[i] = replace(series[i], cols=config.size + config.size // 4)
    return series


# ---------------------------------------------------------------------------- rendering


def _coords(
    rows: int, cols: int, head: Head, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image-frame (x, y) and head-frame (elliptic radius r, angle theta), per pixel."""
    half = min(rows, cols) / 2.0
    y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) / half)[:, None]
    x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2) / half)[None, :]
    c, s = math.cos(head.tilt), math.sin(head.tilt)
    u = ((x - head.cx) * c + (y - head.cy) * s) / (head.ax * scale)
    v = (-(x - head.cx) * s + (y - head.cy) * c) / (head.ay * scale)
    return x, y, np.sqrt(u * u + v * v), np.arctan2(v, u)


def _angle_to(theta: np.ndarray, angle: float) -> np.ndarray:
    """Signed angular distance from `angle`, in (-pi, pi]."""
    return (theta - angle + math.pi) % (2 * math.pi) - math.pi


def render_slice(plan_: SeriesPlan, k: int) -> tuple[np.ndarray, dict[str, int]]:
    """The HU image (float32, rows x cols) of slice `k` and the pixel count of each subtype.

    Deterministic: the noise comes from a generator seeded by the series and slice.
    """
    rng = np.random.default_rng([*plan_.seed, k])
    n = len(plan_.image_ids)
    zr = (k - (n - 1) / 2) / max((n - 1) / 2, 1)  # -1 at the skull base, +1 at the vertex
    scale = math.sqrt(max(1.0 - (0.6 * zr) ** 2, 0.2))
    head = plan_.head
    x, y, r, theta = _coords(plan_.rows, plan_.cols, head, scale)
    pixel = 2.0 / min(plan_.rows, plan_.cols) / (head.ax * scale)  # one pixel, in head units
    inner = 0.90 + 0.015 * np.sin(3 * theta + head.phase)  # inner table of the skull
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r < 1.0] = 35.0  # scalp
    skull = (r >= inner) & (r < 0.97)
    hu[skull] = (head.bone_hu + 250 * np.sin(5 * theta + head.phase))[skull]
    brain = r < inner
    texture = 33.0 + 3.5 * np.sin(9 * x + 2 * head.phase) * np.cos(7 * y - head.phase)
    hu[brain] = texture[brain]
    ventricles = _ventricles(x, y, head, zr)
    hu[ventricles] = 9.0
    counts = dict.fromkeys(SUBTYPES, 0)
    for bleed in plan_.bleeds:
        mask = _bleed_mask(bleed, k, r, theta, x, y, inner, ventricles, head, pixel) & brain
        hu[mask] += (bleed.hu - hu[mask]) * partial_volume(bleed, k)
        counts[bleed.subtype] += int(mask.sum())
    noise = rng.standard_normal(r.shape, dtype=np.float32)
    hu += noise * np.where(brain, np.float32(3.0), np.float32(12.0))
    fov = (x * x + y * y) > 1.0
    hu[fov] = PADDING_HU
    return hu, counts


def partial_volume(bleed: Bleed, k: int) -> float:
    """How much of the bleed's contrast slice `k` shows: 1 through most of the blob, then
    down to :data:`TIP_CONTRAST` at its ends along z.

    A slice is several millimetres thick; where a blob ends inside it, the bleed fills
    only part of the voxel and its density averages with the brain around it (partial
    volume). Such a slice is still labelled positive, as a radiologist who scrolls
    through the series labels it, but it looks faint on its own: the case where the
    neighbouring slices decide.
    """
    t = 1.0 - ((k - bleed.center_slice) / bleed.half_span) ** 2
    if t <= 0:
        return 0.0
    return float(np.clip(math.sqrt(t) / TIP_START, TIP_CONTRAST, 1.0))


def _ventricles(x: np.ndarray, y: np.ndarray, head: Head, zr: float) -> np.ndarray:
    extent = 1.0 - ((zr - 0.1) / 0.45) ** 2
    if extent <= 0:
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    g = math.sqrt(extent)
    mask = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    for side in (-1, 1):
        dx = (x - head.cx - side * 0.09) / (0.045 * g + 0.01)
        dy = (y - head.cy + 0.05) / (0.20 * g + 0.02)
        mask |= dx * dx + dy * dy < 1.0
    return mask


def _bleed_mask(
    bleed: Bleed,
    k: int,
    r: np.ndarray,
    theta: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    inner: np.ndarray,
    ventricles: np.ndarray,
    head: Head,
    pixel: float,
) -> np.ndarray:
    """Where `bleed` cuts slice `k`: an ellipsoid's cross-section, shaped per subtype."""
    t = 1.0 - ((k - bleed.center_slice) / bleed.half_span) ** 2
    if t <= 0:
        return np.zeros(r.shape, bool)
    g = math.sqrt(t)
    d = _angle_to(theta, bleed.angle)
    if bleed.subtype == "epidural":  # a lens against the skull, thick in the middle
        span = bleed.radius * 1.4 * g
        depth = np.maximum(4 * pixel, 0.14 * g) * np.clip(1 - (d / span) ** 2, 0, None)
        return (r < inner) & (r > inner - depth)
    if bleed.subtype == "subdural":  # a long thin crescent along the skull
        span = bleed.radius * 3.0 * g
        depth = max(3 * pixel, 0.08 * g) * np.clip(1 - (d / span) ** 4, 0, None)
        return (r < inner) & (r > inner - depth)
    if bleed.subtype == "subarachnoid":  # thin, along the surface, into the sulci
        span = bleed.radius * 2.5 * g
        fingers = (0.5 + 0.5 * np.cos(14 * theta)) ** 4 * 0.10
        band = max(2 * pixel, 0.025)
        near = np.abs(d) < span
        return near & (r < inner - 0.015) & (r > inner - 0.015 - band - fingers)
    if bleed.subtype == "intraventricular":
        dx, dy = x - head.cx, y - head.cy + 0.05
        return ventricles & (dx * dx + dy * dy < (0.16 * g + 2 * pixel) ** 2)
    # intraparenchymal: a round blob in the brain
    dx = (x - head.cx) / head.ax - bleed.x
    dy = (y - head.cy) / head.ay - bleed.y
    radius = max(bleed.radius * 0.7 * g, 3 * pixel)
    return (dx * dx + dy * dy < radius * radius) & (r < 0.8)


# ----------------------------------------------------------------------------- encoding


def encode_hu(
    hu: np.ndarray, *, group: HeaderGroup, bad_intercept: bool = False
) -> tuple[np.ndarray, float]:
    """Stored values and RescaleIntercept that store `hu` the way `group` does.

    A bad-intercept file keeps HU in [-1000, 3095] and stores ``HU mod 4096`` with
    RescaleIntercept 1, like the broken RSNA files: air wraps to 3096.
    """
    q = np.rint(hu)
    if bad_intercept:
        if group.bits_stored != 12 or group.pixel_representation != 0:
            raise SynthError(
                f"bad-intercept files are 12-bit unsigned. Received: group={group.name}"
            )
        q = np.clip(q, -1000, 3095)
        return np.mod(q, 4096).astype(np.uint16), BAD_INTERCEPT
    low, high = group.stored_range
    stored = np.clip(q - group.intercept, low, high)
    return stored.astype(np.int16 if group.pixel_representation else np.uint16), group.intercept


def expected_hu(hu: np.ndarray, *, group: HeaderGroup, bad_intercept: bool = False) -> np.ndarray:
    """The HU a correct reader gets back from :func:`encode_hu` of `hu`."""
    stored, intercept = encode_hu(hu, group=group, bad_intercept=bad_intercept)
    if bad_intercept:
        return np.clip(np.rint(hu), -1000, 3095).astype(np.float32)
    return stored.astype(np.float32) + np.float32(intercept)


def dicom_bytes(
    stored: np.ndarray,
    *,
    group: HeaderGroup,
    intercept: float,
    image_id: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    position: tuple[float, float, float],
    pixel_spacing: float,
) -> bytes:
    """A CT slice as DICOM Part 10 bytes, with the headers the RSNA files carry."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    with quiet_rsna_uids():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
        meta.MediaStorageSOPInstanceUID = UID(image_id)
        meta.TransferSyntaxUID = UID(group.transfer_syntax)
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = image_id
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.InstanceNumber = instance_number
        ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = group.bits_stored
        ds.HighBit = group.bits_stored - 1
        ds.PixelRepresentation = group.pixel_representation
        ds.WindowCenter = group.window_center.split("\\")
        ds.WindowWidth = group.window_width.split("\\")
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = "1"
        ds.PixelData = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<")).tobytes()
        buffer = io.BytesIO()
        implicit = group.transfer_syntax == IMPLICIT_VR_LE
        ds.save_as(buffer, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def _write_series(job: tuple[SeriesPlan, str]) -> list[tuple[str, tuple[int, ...]]]:
    """Render and write every slice of a series; return (image ID, labels) per slice."""
    plan_, out = job
    folder = Path(out) / (TRAIN_DIR if plan_.split == "train" else TEST_DIR)
    group = GROUPS[plan_.group]
    n = len(plan_.image_ids)
    spacing = 230.0 / min(plan_.rows, plan_.cols)  # a 230 mm field of view
    min_pixels = max(4, MIN_BLEED_FRACTION * plan_.rows * plan_.cols)
    results = []
    for k, image_id in enumerate(plan_.image_ids):
        hu, counts = render_slice(plan_, k)
        stored, intercept = encode_hu(hu, group=group, bad_intercept=plan_.bad_intercept)
        data = dicom_bytes(
            stored,
            group=group,
            intercept=intercept,
            image_id=image_id,
            patient_id=plan_.patient_id,
            study_uid=plan_.study_uid,
            series_uid=plan_.series_uid,
            instance_number=(n - k) if plan_.instance_reversed else (k + 1),
            position=(-115.0, -115.0, plan_.z0 + k * plan_.dz),
            pixel_spacing=spacing,
        )
        files.write_bytes(folder / f"{image_id}.dcm", data)
        subtypes = tuple(int(counts[s] >= min_pixels) for s in SUBTYPES)
        results.append((image_id, (*subtypes, int(any(subtypes)))))
    return results


# ------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class SynthResult:
    """What :func:`make_competition` wrote and planted."""

    root: Path
    train_labels: pd.DataFrame
    test_labels: pd.DataFrame
    manifest: dict


def make_competition(
    out: str | os.PathLike[str],
    config: SynthConfig = SynthConfig(),
    *,
    workers: int | None = None,
    force: bool = False,
) -> SynthResult:
    """Write a synthetic competition to `out` (see the module docstring).

    Raises:
        SynthError: `out` already holds a competition and `force` is False.
    """
    root = Path(out)
    if (root / TRAIN_CSV).exists() and not force:
        raise SynthError(
            f"{root} already holds a competition ({TRAIN_CSV}); pass --force (force=True in Python) to overwrite it"
        )
    series = plan(config)
    jobs = [(s, str(root)) for s in series]
    rows: dict[str, list[tuple[str, tuple[int, ...]]]] = {"train": [], "test": []}
    written = parallel_map(_write_series, jobs, workers=workers, desc="synth", unit="series")
    for s, result in zip(series, written, strict=True):
        rows[s.split].extend(result)
    labels = {split: _frame(items) for split, items in rows.items()}
    rng = np.random.default_rng([config.seed, 2])
    corrupt = _corrupt(root, series, rng)
    duplicated = sorted(
        rng.choice(labels["train"].index, size=min(3, len(labels["train"])), replace=False).tolist()
    )
    _write_csvs(root, labels, duplicated, rng)
    manifest = {
        "config": asdict(config),
        "corrupt": corrupt,
        "bad_intercept": sorted(i for s in series if s.bad_intercept for i in s.image_ids),
        "odd_size": sorted(i for s in series if s.rows != s.cols for i in s.image_ids),
        "duplicated_label_images": duplicated,
        "header_groups": {g: sum(len(s.image_ids) for s in series if s.group == g) for g in GROUPS},
        "images": {split: len(frame) for split, frame in labels.items()},
        "patients": config.patients,
        "series": len(series),
    }
    files.write_json(root / MANIFEST, manifest)
    return SynthResult(root, labels["train"], labels["test"], manifest)


def _frame(items: list[tuple[str, tuple[int, ...]]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [v for _, v in items],
        index=pd.Index([i for i, _ in items], name="image_id"),
        columns=list(LABELS),
    )
    return frame.astype(np.int8).sort_index()


def _corrupt(
    root: Path, series: list[SeriesPlan], rng: np.random.Generator
) -> dict[str, list[str]]:
    """Truncate the pixel data of one regular train file and one test file."""
    corrupt: dict[str, list[str]] = {"train": [], "test": []}
    for split, folder in (("train", TRAIN_DIR), ("test", TEST_DIR)):
        candidates = [
            s for s in series if s.split == split and not s.bad_intercept and s.rows == s.cols
        ]
        if not candidates:
            continue
        chosen = candidates[int(rng.integers(len(candidates)))]
        image_id = chosen.image_ids[int(rng.integers(len(chosen.image_ids)))]
        path = root / folder / f"{image_id}.dcm"
        data = path.read_bytes()
        files.write_bytes(path, data[: len(data) - chosen.rows * chosen.cols])
        corrupt[split].append(image_id)
    return corrupt


def _write_csvs(
    root: Path, labels: dict[str, pd.DataFrame], duplicated: list[str], rng: np.random.Generator
) -> None:
    train = labels["train"].iloc[rng.permutation(len(labels["train"]))]
    long = to_long(train)
    blocks = [long]
    for image_id in duplicated:  # repeat whole six-row blocks, as in the real file
        blocks.append(long[long["ID"].str.startswith(f"{image_id}_")])
    files.write_csv(pd.concat(blocks, ignore_index=True), root / TRAIN_CSV)
    test = labels["test"].iloc[rng.permutation(len(labels["test"]))]
    sample = to_long(test.astype(np.float64) * 0 + 0.5)
    files.write_csv(sample, root / SAMPLE_CSV)
    files.write_csv(to_long(labels["test"]), root / TEST_LABELS)
