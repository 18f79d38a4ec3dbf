"""A synthetic RSNA competition: phantom head CTs with planted bleeds, in Kaggle's layout.

:func:`make_competition` writes::

    OUT/stage_2_train/ID_<hex>.dcm          labelled slices
    OUT/stage_2_test/ID_<hex>.dcm           unlabelled slices
    OUT/stage_2_train.csv                   ID,Label, six rows per image, some rows repeated
    OUT/stage_2_sample_submission.csv       ID,Label with Label 0.5
    OUT/synthetic_manifest.json             what was planted: the quirks, by image ID
    OUT/synthetic_test_labels.csv           the hidden test labels, to score a submission

Phantoms follow non-contrast head CT: air at -1000 HU, scalp, a skull of 1000-1800 HU
with its diploe, grey matter 36-44 HU in a folded cortical ribbon and deep nuclei, white
matter 22-29 HU, textured; CSF at 8 HU in sulci, a rim and ventricles that widen with
age. Negatives above 50 HU: calcified choroid plexus, pineal and falx plaques (100-300
HU), a dense falx, dural sinuses and arteries (50-70 HU), petrous bone and its
beam-hardening streaks at the skull base, and the bone partial-volume rim that the
scanner's blur (:data:`PSF_SIGMA`) puts at every bone edge (:data:`MIMICS`). Series have
28-40 slices (:data:`SLICE_SPREAD`), 4-6 mm apart, and vary in field of view, gantry tilt,
noise and calibration by scanner group; a tenth show motion ghosts.

Bleeds are 3-D lobulated blobs shaped by subtype (a lens for epidural, a crescent for
subdural, strands along the surface for subarachnoid, inside the ventricles, in the
parenchyma), from the detection floor to large; acute ones are 55-90 HU, a share
(:data:`SUBACUTE_SHARE`) are subacute and near-isodense (40-52 HU). A slice's label is 1
for a subtype when its blob covers at least :data:`MIN_BLEED_FRACTION` of it (and 4
pixels), and ``any`` is their OR; `SynthConfig.label_noise` of the borderline labels
(thin, faint or just under that floor) are flipped, as readers disagree there. At a
blob's ends along z the bleed fills only part of the slice's thickness and looks faint
(:func:`partial_volume`): positive, but best recognised from the neighbours, which is
what the series model of stage 2 is for. About 14% of slices are ``any``-positive, as
in the real data, and epidural is the rarest subtype. The manifest records every bleed's
pixels, the subacute slices, the mimics and the flipped labels by image ID.

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

import cv2
import numpy as np
import pandas as pd

from rsna import files
from rsna.data.dicom import EXPLICIT_VR_LE, IMPLICIT_VR_LE, MAX_DIMENSION, quiet_rsna_uids
from rsna.data.labels import LABELS, SUBTYPES, to_long
from rsna.data.paths import SAMPLE_CSV, TEST_DIRS, TRAIN_CSV, TRAIN_DIRS
from rsna.errors import RsnaError
from rsna.parallel import parallel_map

__all__ = [
    "bleed_masks",
    "BAD_INTERCEPT",
    "CT_IMAGE_STORAGE",
    "GROUPS",
    "MANIFEST",
    "MIMICS",
    "MIN_BLEED_FRACTION",
    "PADDING_HU",
    "PSF_SIGMA",
    "SLICE_SPREAD",
    "SUBACUTE_HU",
    "SUBACUTE_SHARE",
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
#: The scanner's point-spread function, pixels (a Gaussian's sigma): every bone edge gets a
#: partial-volume rim through blood's HU range, as real CT does.
PSF_SIGMA = 0.6
#: Share of bleeds that are subacute: near-isodense to grey matter (SUBACUTE_HU).
SUBACUTE_SHARE = 0.12
#: A subacute bleed's density range, HU (low, high): about grey matter's.
SUBACUTE_HU = (40.0, 52.0)
#: Slices per series vary by this share around `SynthConfig.slices` (34 gives 28-40).
SLICE_SPREAD = 0.18
#: Dense structures that are not bleeds, as the manifest names them.
MIMICS = (
    "choroid",
    "pineal",
    "falx",
    "falx_plaque",
    "sinus",
    "transverse_sinus",
    "artery",
    "petrous",
    "streaks",
    "motion",
)
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
        slices: typical slices per series; each series has this within
            :data:`SLICE_SPREAD` (the real series have 20 to 60, mostly about 30-40).
        size: rows (and columns) of a regular image; a few series are wider.
        seed: the seed of every random choice.
        test_fraction: share of patients put in the test set.
        bleed_fraction: share of series with at least one bleed.
        label_noise: share of the borderline labels (thin, faint or just under the
            positive floor) that are flipped, as readers disagree on those slices.
    """

    patients: int = 20
    studies: int = 2
    slices: int = 34
    size: int = 512
    seed: int = 0
    test_fraction: float = 0.25
    bleed_fraction: float = 0.65
    label_noise: float = 0.1

    def __post_init__(self) -> None:
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SynthError(
                    f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
                )
            if value > high:
                raise SynthError(f"`{name}` must be at most {high}. Received: {name}={value!r}")
        for name in ("test_fraction", "bleed_fraction", "label_noise"):
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
    hu: float  # acute blood is 60-90 HU; a subacute bleed is near-isodense, 40-52 HU
    lobes: float = 0.0  # how irregular the outline is: 0 round, 0.35 lobulated
    lobe_phase: float = 0.0


@dataclass(frozen=True)
class Head:
    """Shape and anatomy of a patient's head phantom.

    Soft-tissue densities follow radiology texts: grey matter 35-45 HU, white matter 20-30,
    CSF 0-15; calcified choroid plexus, pineal and falx are over 100 HU and are not bleeds;
    the dural sinuses and large arteries are 50-70 HU on non-contrast CT.
    """

    cx: float
    cy: float
    ax: float
    ay: float
    tilt: float
    bone_hu: float
    phase: float
    grey_hu: float = 40.0
    white_hu: float = 26.0
    cortex: float = 0.06  # cortical ribbon, head units
    atrophy: float = 0.2  # 0 young (narrow sulci, small ventricles) to 1 old
    gyri: int = 11
    choroid_hu: float = 0.0  # 0 when not calcified
    pineal_hu: float = 0.0
    falx_hu: float = 0.0  # 0 when the falx is not dense
    plaque_hu: float = 0.0  # a calcified plaque on the falx; 0 when there is none
    plaque_v: float = 0.5
    vessel_hu: float = 58.0
    texture: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)


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
    fov: float = 1.0  # the head's size in the image: above 1 is a tighter field of view
    gantry: float = 0.0  # a tilted gantry moves the head's centre along z, head units
    noise_hu: float = 3.0  # the brain's noise, by scanner group and dose
    hu_offset: float = 0.0  # the scanner's calibration drift
    motion: tuple[int, ...] = ()  # slices with a motion ghost


# Scanner groups differ in noise and calibration, as the RSNA institutions do.
_GROUP_NOISE = {"s16": 3.0, "s12": 4.0, "u12": 5.0}
_GROUP_OFFSET = {"s16": 0.0, "s12": 2.0, "u12": -2.0}


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
    spread = max(1, round(config.slices * SLICE_SPREAD))
    for p in range(config.patients):
        patient_id = ids.new(9)
        split = "test" if p in test_patients else "train"
        group = str(rng.choice(groups, p=[_GROUP_SHARES[g] for g in groups]))
        head = _plan_head(rng)
        bleeds: tuple[Bleed, ...] = ()
        for s in range(int(rng.integers(1, config.studies + 1))):
            n = max(3, config.slices + int(rng.integers(-spread, spread + 1)))
            dz = float(rng.choice([4.0, 4.5, 5.0, 5.0, 5.0, 6.0]))
            if s == 0 or rng.random() > 0.7:  # a follow-up study mostly shows the same bleeds
                bleeds = _plan_bleeds(rng, config, group, n=n, dz=dz)
            rows = config.size
            cols = config.size + config.size // 4 if rng.random() < 0.06 else config.size
            moving = rng.random() < 0.1
            first_moving = int(rng.integers(0, max(n - 1, 1)))
            series.append(
                SeriesPlan(
                    index=len(series),
                    split=split,
                    patient_id=patient_id,
                    study_uid=ids.new(10),
                    series_uid=ids.new(10),
                    image_ids=tuple(ids.new(9) for _ in range(n)),
                    group=group,
                    bad_intercept=group == "u12" and rng.random() < 0.4,
                    rows=rows,
                    cols=cols,
                    z0=float(rng.uniform(-150.0, 50.0)),
                    dz=dz,
                    instance_reversed=bool(rng.random() < 0.3),
                    head=head,
                    bleeds=_fit_bleeds(bleeds, n),
                    seed=(config.seed, 1, len(series)),
                    fov=float(rng.uniform(0.88, 1.12)),
                    gantry=float(rng.uniform(-0.06, 0.06)),
                    noise_hu=_GROUP_NOISE[group] * float(rng.uniform(0.85, 1.2)),
                    hu_offset=_GROUP_OFFSET[group] + float(rng.uniform(-1.5, 1.5)),
                    motion=tuple(range(first_moving, first_moving + 2)) if moving else (),
                )
            )
    return _guarantee_quirks(series)


def _plan_head(rng: np.random.Generator) -> Head:
    return Head(
        cx=float(rng.uniform(-0.05, 0.05)),
        cy=float(rng.uniform(-0.05, 0.05)),
        ax=float(rng.uniform(0.66, 0.74)),
        ay=float(rng.uniform(0.80, 0.88)),
        tilt=float(rng.uniform(-0.15, 0.15)),
        bone_hu=float(rng.uniform(1200.0, 1500.0)),
        phase=float(rng.uniform(0.0, 2 * math.pi)),
        grey_hu=float(rng.uniform(36.0, 44.0)),
        white_hu=float(rng.uniform(22.0, 29.0)),
        cortex=float(rng.uniform(0.06, 0.09)),
        atrophy=float(rng.beta(1.5, 3.0)),
        gyri=int(rng.integers(14, 23)),
        choroid_hu=float(rng.uniform(110.0, 300.0)) if rng.random() < 0.6 else 0.0,
        pineal_hu=float(rng.uniform(100.0, 250.0)) if rng.random() < 0.5 else 0.0,
        falx_hu=float(rng.uniform(45.0, 65.0)) if rng.random() < 0.6 else 0.0,
        plaque_hu=float(rng.uniform(120.0, 260.0)) if rng.random() < 0.25 else 0.0,
        plaque_v=float(rng.uniform(-0.7, 0.7)),
        vessel_hu=float(rng.uniform(52.0, 68.0)),
        texture=tuple(float(v) for v in rng.uniform(0.0, 2 * math.pi, 4)),
    )


#: Half the extent along z of each subtype's bleeds, millimetres (low, high).
_HALF_SPAN_MM = {
    "epidural": (8.0, 18.0),
    "intraparenchymal": (5.0, 20.0),
    "intraventricular": (7.0, 16.0),
    "subarachnoid": (6.0, 18.0),
    "subdural": (10.0, 26.0),
}


def _plan_bleeds(
    rng: np.random.Generator, config: SynthConfig, group: str, *, n: int, dz: float
) -> tuple[Bleed, ...]:
    # Positive rates differ between header groups in the real data; so they do here.
    fraction = min(1.0, config.bleed_fraction * (1.25 if group == "u12" else 1.0))
    if rng.random() >= fraction:
        return ()
    bleeds = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        subtype = str(rng.choice(SUBTYPES, p=[_SUBTYPE_WEIGHTS[s] for s in SUBTYPES]))
        if subtype == "intraventricular":  # ventricles exist in the middle of the head only
            center = rng.uniform(0.45, 0.62) * (n - 1)
        else:
            center = rng.uniform(0.25, 0.85) * (n - 1)
        angle = float(rng.uniform(0, 2 * math.pi))
        low, high = _HALF_SPAN_MM[subtype]
        subacute = rng.random() < SUBACUTE_SHARE
        bleeds.append(
            Bleed(
                subtype=subtype,
                center_slice=float(center),
                half_span=float(rng.uniform(low, high) / dz),
                angle=angle,
                x=float(0.35 * math.cos(angle) * rng.uniform(0.3, 1.0)),
                y=float(0.35 * math.sin(angle) * rng.uniform(0.3, 1.0)),
                radius=float(math.exp(rng.uniform(math.log(0.06), math.log(0.28)))),
                hu=float(
                    rng.uniform(*SUBACUTE_HU)
                    if subacute
                    else rng.uniform(55.0, 70.0)
                    if subtype == "subarachnoid"
                    else rng.uniform(60.0, 90.0)
                ),
                lobes=float(rng.uniform(0.0, 0.35)),
                lobe_phase=float(rng.uniform(0, 2 * math.pi)),
            )
        )
    return tuple(bleeds)


def _fit_bleeds(bleeds: tuple[Bleed, ...], n: int) -> tuple[Bleed, ...]:
    """A follow-up study with another slice count keeps its bleeds inside the series."""
    return tuple(replace(b, center_slice=min(b.center_slice, 0.85 * (n - 1))) for b in bleeds)


def _guarantee_quirks(series: list[SeriesPlan]) -> list[SeriesPlan]:
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
            n = len(series[i].image_ids)
            centre = 0.53 * (n - 1) if subtype == "intraventricular" else first.center_slice
            changed = replace(
                first, subtype=subtype, center_slice=centre, radius=max(first.radius, 0.15)
            )
            series[i] = replace(series[i], bleeds=(changed, *series[i].bleeds[1:]))
    if not any(series[i].bad_intercept for i in train):
        i = train[-1]
        series[i] = replace(series[i], group="u12", bad_intercept=True)
    if not any(series[i].cols != series[i].rows for i in train):
        i = train[0]
        series[i] = replace(series[i], cols=series[i].rows + series[i].rows // 4)
    return series


# ---------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Frame:
    """Per-pixel coordinates of one slice: image frame (x, y) and head frame (u, v, r,
    theta), with r = 1 at the scalp and the inner table of the skull near 0.9."""

    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    r: np.ndarray
    theta: np.ndarray
    inner: np.ndarray
    pixel: float  # one pixel, in head units
    zr: float  # -1 at the skull base, +1 at the vertex


def _geometry(plan_: SeriesPlan, k: int) -> _Frame:
    n = len(plan_.image_ids)
    zr = (k - (n - 1) / 2) / max((n - 1) / 2, 1)
    scale = math.sqrt(max(1.0 - (0.6 * zr) ** 2, 0.2)) * plan_.fov
    head = plan_.head
    rows, cols = plan_.rows, plan_.cols
    half = min(rows, cols) / 2.0
    y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) / half)[:, None]
    x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2) / half)[None, :]
    cy = head.cy + plan_.gantry * zr
    c, s = math.cos(head.tilt), math.sin(head.tilt)
    u = ((x - head.cx) * c + (y - cy) * s) / (head.ax * scale)
    v = (-(x - head.cx) * s + (y - cy) * c) / (head.ay * scale)
    r, theta = np.sqrt(u * u + v * v), np.arctan2(v, u)
    inner = 0.90 + 0.015 * np.sin(3 * theta + head.phase)
    pixel = 2.0 / min(rows, cols) / (head.ax * scale)
    return _Frame(x, y, u, v, r, theta, inner, pixel, zr)


def _angle_to(theta: np.ndarray, angle: float) -> np.ndarray:
    """Signed angular distance from `angle`, in (-pi, pi]."""
    return (theta - angle + math.pi) % (2 * math.pi) - math.pi


def _disc(f: _Frame, u: float, v: float, radius: float) -> np.ndarray:
    du, dv = f.u - u, f.v - v
    return du * du + dv * dv < radius * radius


def _folds(f: _Frame, head: Head) -> tuple[np.ndarray, np.ndarray]:
    """Depth from the inner table inwards, and the cortical folding (+1 a gyrus' crown,
    -1 a sulcus' trough) at each pixel."""
    return f.inner - f.r, np.cos(head.gyri * f.theta + 3.0 * f.zr + head.phase)


def _widening(head: Head) -> float:
    """How much wider the ventricles (and the choroid plexus in them) are with age."""
    return 1.0 + 0.8 * head.atrophy


def _brain_tissue(
    f: _Frame, head: Head, rng: np.random.Generator, *, depth: np.ndarray, fold: np.ndarray
) -> np.ndarray:
    """Grey and white matter with a folded cortical ribbon, deep grey nuclei and texture."""
    ribbon = head.cortex * (1.0 + 0.6 * fold)
    grey = 1.0 / (1.0 + np.exp((depth - ribbon) / 0.012))
    g = 1.0 - ((f.zr + 0.05) / 0.3) ** 2
    if g > 0:  # basal ganglia and thalami, beside the ventricles
        for side in (-1, 1):
            du, dv = (f.u - side * 0.22) / (0.09 * math.sqrt(g)), f.v / 0.16
            grey = np.maximum(grey, (du * du + dv * dv < 1.0).astype(np.float32))
    t = head.texture
    texture = 1.2 * np.sin(7 * f.u + t[0]) * np.cos(5 * f.v + t[1]) + 0.8 * np.sin(
        11 * f.v + 4 * f.zr + t[2]
    ) * np.cos(13 * f.u + t[3])
    fine = cv2.GaussianBlur(rng.standard_normal(f.r.shape, dtype=np.float32), (0, 0), 1.5)
    return head.white_hu + (head.grey_hu - head.white_hu) * grey + texture + 4.0 * fine


def _csf(head: Head, *, depth: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Sulci at the cortical folds' troughs and a CSF rim under the skull, wider with age."""
    sulci = (fold < -0.9 + 0.06 * head.atrophy) & (depth < 0.06 + 0.06 * head.atrophy)
    return sulci | (depth < 0.008 + 0.022 * head.atrophy)


def _ventricles(f: _Frame, head: Head) -> np.ndarray:
    extent = 1.0 - ((f.zr - 0.1) / 0.45) ** 2
    if extent <= 0:
        return np.zeros(f.r.shape, bool)
    g = math.sqrt(extent)
    wide = _widening(head)
    mask = np.zeros(f.r.shape, bool)
    for side in (-1, 1):
        du = (f.u - side * 0.12 * wide) / (0.06 * g * wide + 0.014)
        dv = (f.v - 0.02) / (0.26 * g + 0.03)
        mask |= du * du + dv * dv < 1.0
    return mask


def _mimics(f: _Frame, head: Head) -> list[tuple[str, np.ndarray, float]]:
    """Dense structures that are not bleeds: (name, where, HU), each where it belongs."""
    out = []
    z = f.zr
    if head.choroid_hu and -0.15 < z < 0.35:  # calcified choroid plexus in the atria
        wide = _widening(head)
        mask = _disc(f, -0.12 * wide, 0.2, 0.035) | _disc(f, 0.12 * wide, 0.2, 0.035)
        out.append(("choroid", mask, head.choroid_hu))
    if head.pineal_hu and -0.15 < z < 0.1:
        out.append(("pineal", _disc(f, 0.0, 0.1, 0.03), head.pineal_hu))
    if head.falx_hu and z > -0.1:  # a dense, partly calcified falx on the midline
        falx = (np.abs(f.u) < max(0.6 * f.pixel, 0.012)) & (np.abs(f.v) < 0.8) & (f.r < f.inner)
        falx &= np.abs(f.v) > 0.3 if z < 0.3 else True
        out.append(("falx", falx, head.falx_hu))
    if head.plaque_hu and z > -0.1:
        plaque = (np.abs(f.u) < max(f.pixel, 0.02)) & (np.abs(f.v - head.plaque_v) < 0.06)
        out.append(("falx_plaque", plaque, head.plaque_hu))
    if z > -0.4:  # the superior sagittal sinus, front and back, inside the inner table
        sinus = _disc(f, 0.0, 0.86, 0.04) | _disc(f, 0.0, -0.86, 0.03)
        out.append(("sinus", sinus & (f.r < f.inner), head.vessel_hu))
    if -0.7 < z < -0.35:  # the transverse sinuses: a crescent at the back, like a subdural
        d = _angle_to(f.theta, math.pi / 2)
        depth = f.inner - f.r
        out.append(("transverse_sinus", (np.abs(d) < 0.9) & (depth > 0) & (depth < 0.035), head.vessel_hu))  # fmt: skip
    if -0.45 < z < -0.2:  # the middle cerebral arteries, running out from the midline
        mca = (np.abs(f.v + 0.1) < max(0.7 * f.pixel, 0.015)) & (np.abs(f.u) > 0.08) & (np.abs(f.u) < 0.45)  # fmt: skip
        out.append(("artery", mca, head.vessel_hu - 4.0))
    return out


def _skull_base(f: _Frame, head: Head, hu: np.ndarray) -> list[str]:
    """Petrous bones inside the head at its base, and the beam-hardening streaks they cast."""
    if f.zr > -0.5:
        return []
    size = 0.05 + 0.1 * (-0.5 - f.zr) / 0.5
    bone = _disc(f, -0.36, 0.05, size) | _disc(f, 0.36, 0.05, size)
    hu[bone] = head.bone_hu
    phi = np.arctan2(f.v - 0.05, f.u)
    dist = np.sqrt(f.u * f.u + (f.v - 0.05) ** 2)
    streaks = 40.0 * np.cos(23 * phi + head.phase) ** 24 * np.exp(-dist / 0.5)
    bar = -18.0 * (np.abs(f.v - 0.05) < 0.04) * (np.abs(f.u) < 0.3)  # the Hounsfield bar
    inside = (f.r < f.inner) & ~bone
    hu[inside] += (streaks + bar)[inside]
    return ["petrous", "streaks"]


def bleed_masks(config: SynthConfig, image_ids: list[str]) -> dict[str, np.ndarray]:
    """Where bleeds were planted: image ID -> the union of its subtypes' masks (bool,
    the DICOM's rows x columns), for the images of `image_ids` that `config`'s
    competition holds, drawn again from the plan (the manifest's ``config``)."""
    wanted, found = set(image_ids), {}
    for series in plan(config):
        for k, image_id in enumerate(series.image_ids):
            if image_id in wanted:
                _, masks, _, _ = _render(series, k)
                shape = _geometry(series, k).r.shape
                found[image_id] = np.logical_or.reduce([*masks.values(), np.zeros(shape, bool)])
    return found


def _render(
    plan_: SeriesPlan, k: int
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float], list[str]]:
    """Slice `k`: HU image, each subtype's bleed mask, each subtype's contrast (partial
    volume), and the names of the non-bleed dense structures it shows."""
    rng = np.random.default_rng([*plan_.seed, k])
    head = plan_.head
    f = _geometry(plan_, k)
    hu = np.full(f.r.shape, -1000.0, np.float32)
    hu[f.r < 1.0] = 35.0  # scalp
    skull = (f.r >= f.inner) & (f.r < 0.97)
    diploe = np.abs(f.r - (f.inner + 0.97) / 2) < 0.012  # the marrow between the tables
    hu[skull] = (head.bone_hu + 250 * np.sin(5 * f.theta + head.phase))[skull]
    hu[skull & diploe] *= 0.55
    brain = f.r < f.inner
    depth, fold = _folds(f, head)
    hu[brain] = _brain_tissue(f, head, rng, depth=depth, fold=fold)[brain]
    ventricles = _ventricles(f, head)
    csf = (_csf(head, depth=depth, fold=fold) & brain) | ventricles
    hu[csf] = 8.0
    shown = []
    for name, mask, density in _mimics(f, head):
        if mask.any():
            hu[mask] = density
            shown.append(name)
    shown += _skull_base(f, head, hu)
    masks, contrast = {}, {}
    for bleed in plan_.bleeds:
        mask = _bleed_mask(bleed, k, f, ventricles) & brain
        share = partial_volume(bleed, k)
        hu[mask] += (bleed.hu - hu[mask]) * share
        masks[bleed.subtype] = masks.get(bleed.subtype, np.zeros(mask.shape, bool)) | mask
        contrast[bleed.subtype] = max(contrast.get(bleed.subtype, 0.0), share)
    hu = _scanner(hu, plan_, k, brain, rng)
    hu[(f.x * f.x + f.y * f.y) > 1.0] = PADDING_HU
    return hu, masks, contrast, shown


def _scanner(
    hu: np.ndarray, plan_: SeriesPlan, k: int, brain: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The scanner's blur (bone partial volume at every edge), calibration drift, motion
    ghosts and noise."""
    hu = cv2.GaussianBlur(hu, (0, 0), PSF_SIGMA)
    tissue = hu > -500
    hu[tissue] += plan_.hu_offset
    if k in plan_.motion:  # the head moved during the rotation: a faint shifted copy
        shift = max(2, plan_.rows // 48)
        hu = 0.7 * hu + 0.3 * np.roll(hu, (shift, -shift), axis=(0, 1))
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    hu += noise * np.where(brain, np.float32(plan_.noise_hu), np.float32(12.0))
    return hu.astype(np.float32)


def render_slice(plan_: SeriesPlan, k: int) -> tuple[np.ndarray, dict[str, int]]:
    """The HU image (float32, rows x cols) of slice `k` and the pixel count of each subtype.

    Deterministic: the noise comes from a generator seeded by the series and slice.
    """
    hu, masks, _, _ = _render(plan_, k)
    counts = dict.fromkeys(SUBTYPES, 0)
    for subtype, mask in masks.items():
        counts[subtype] = int(mask.sum())
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


def _bleed_mask(bleed: Bleed, k: int, f: _Frame, ventricles: np.ndarray) -> np.ndarray:
    """Where `bleed` cuts slice `k`: an ellipsoid's cross-section, shaped per subtype, with
    a lobulated outline."""
    t = 1.0 - ((k - bleed.center_slice) / bleed.half_span) ** 2
    if t <= 0:
        return np.zeros(f.r.shape, bool)
    g = math.sqrt(t)
    d = _angle_to(f.theta, bleed.angle)
    lobes = 1.0 + bleed.lobes * np.sin(3 * f.theta + bleed.lobe_phase + 2 * k / bleed.half_span)
    pixel = f.pixel
    if bleed.subtype == "epidural":  # a lens against the skull, thick in the middle
        span = bleed.radius * 1.4 * g
        depth = np.maximum(4 * pixel, 0.14 * g) * np.clip(1 - (d / span) ** 2, 0, None)
        return (f.r < f.inner) & (f.r > f.inner - depth * lobes)
    if bleed.subtype == "subdural":  # a long thin crescent along the skull
        span = bleed.radius * 3.0 * g
        depth = max(3 * pixel, 0.08 * g) * np.clip(1 - (d / span) ** 4, 0, None)
        return (f.r < f.inner) & (f.r > f.inner - depth * lobes)
    if bleed.subtype == "subarachnoid":  # thin, along the surface, into the sulci
        span = bleed.radius * 2.5 * g
        fingers = (0.5 + 0.5 * np.cos(14 * f.theta)) ** 4 * 0.10
        band = max(2 * pixel, 0.025)
        near = np.abs(d) < span
        return near & (f.r < f.inner - 0.015) & (f.r > f.inner - 0.015 - band - fingers)
    if bleed.subtype == "intraventricular":
        dv = f.v - 0.02
        return ventricles & (f.u * f.u + dv * dv < ((0.16 * g + 2 * pixel) * lobes) ** 2)
    # intraparenchymal: a lobulated blob in the brain
    du, dv = f.u - bleed.x, f.v - bleed.y
    radius = np.maximum(bleed.radius * 0.7 * g, 1.5 * pixel) * (
        1.0 + bleed.lobes * np.sin(3 * np.arctan2(dv, du) + bleed.lobe_phase)
    )
    return (du * du + dv * dv < radius * radius) & (f.r < 0.8)


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


def _write_series(job: tuple[SeriesPlan, str]) -> list[dict]:
    """Render and write every slice of a series; return what each slice shows."""
    plan_, out = job
    folder = Path(out) / (TRAIN_DIR if plan_.split == "train" else TEST_DIR)
    group = GROUPS[plan_.group]
    n = len(plan_.image_ids)
    spacing = 230.0 / min(plan_.rows, plan_.cols) / plan_.fov  # about a 230 mm field of view
    min_pixels = max(4.0, MIN_BLEED_FRACTION * plan_.rows * plan_.cols)
    results = []
    for k, image_id in enumerate(plan_.image_ids):
        hu, masks, contrast, shown = _render(plan_, k)
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
        results.append(
            {
                "image_id": image_id,
                "pixels": {s: int(m.sum()) for s, m in masks.items() if m.any()},
                "contrast": contrast,
                "min_pixels": min_pixels,
                "shown": shown + (["motion"] if k in plan_.motion else []),
                "subacute": any(
                    b.hu <= SUBACUTE_HU[1] and partial_volume(b, k) > 0 for b in plan_.bleeds
                ),
            }
        )
    return results


def _labels(
    slices: list[dict], *, label_noise: float, rng: np.random.Generator
) -> tuple[list[tuple[str, tuple[int, ...]]], dict]:
    """Labels from the planted pixels, with `label_noise` of the borderline labels flipped.

    A label is borderline where the bleed is thin (fewer than 3x the positive floor's
    pixels), faint (under half its contrast: partial volume) or just under the floor: the
    slices on which readers disagree.
    """
    positive, borderline = set(), []
    for item in slices:
        for subtype, pixels in item["pixels"].items():
            key = (item["image_id"], subtype)
            if pixels >= item["min_pixels"]:
                positive.add(key)
                if pixels < 3 * item["min_pixels"] or item["contrast"][subtype] < 0.5:
                    borderline.append(key)
            else:
                borderline.append(key)
    borderline.sort()
    flips = int(round(label_noise * len(borderline)))
    chosen = sorted(borderline[i] for i in rng.choice(len(borderline), size=flips, replace=False))
    flipped = positive.symmetric_difference(chosen)
    rows = []
    for item in slices:
        subtypes = tuple(int((item["image_id"], s) in flipped) for s in SUBTYPES)
        rows.append((item["image_id"], (*subtypes, int(any(subtypes)))))
    noise = {
        "rate": label_noise,
        "borderline": len(borderline),
        "flipped": [f"{image_id}_{subtype}" for image_id, subtype in chosen],
    }
    return rows, noise


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
    written = parallel_map(_write_series, jobs, workers=workers, desc="synth", unit="series")
    slices = {"train": [], "test": []}
    for s, result in zip(series, written, strict=True):
        slices[s.split].extend(result)
    noise_rng = np.random.default_rng([config.seed, 3])
    labels, label_noise = {}, {}
    for split, items in slices.items():
        rows, label_noise[split] = _labels(items, label_noise=config.label_noise, rng=noise_rng)
        labels[split] = _frame(rows)
    rng = np.random.default_rng([config.seed, 2])
    corrupt = _corrupt(root, series, rng)
    duplicated = sorted(
        rng.choice(labels["train"].index, size=min(3, len(labels["train"])), replace=False).tolist()
    )
    _write_csvs(root, labels, duplicated, rng)
    everything = slices["train"] + slices["test"]
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
        "bleed_pixels": {i["image_id"]: i["pixels"] for i in everything if i["pixels"]},
        "subacute": sorted(i["image_id"] for i in everything if i["subacute"]),
        "mimics": {
            name: sorted(i["image_id"] for i in everything if name in i["shown"])
            for name in MIMICS
        },
        "label_noise": label_noise,
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
