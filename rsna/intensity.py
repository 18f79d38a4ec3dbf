"""A reference that does not learn images: blood-range pixel counts and a logistic
regression per label, on the CNN's own folds. NumPy, OpenCV and scikit-learn only.

Five numbers per slice (:data:`FEATURES`), from the store's image in a window that
spans CSF to above blood: the pixels in :data:`BLOOD_HU` inside the skull, those of
them near bone (epidural, subdural), near CSF (intraventricular, subarachnoid) and in
thin strands (a 3x3 opening removes them), and the area inside the skull. A skeptical
Kaggler's first try; a CNN that cannot beat it well has learned little. With
:func:`neighbour_features` the slices above and below add theirs, the series model's
counterpart. ``rsna evaluate`` and the demo report it next to the prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from rsna.data.labels import LABELS
from rsna.data.series import neighbours
from rsna.data.windowing import Window
from rsna.errors import RsnaError
from rsna.parallel import progress

__all__ = [
    "BLOOD_HU",
    "CSF_HU",
    "FEATURES",
    "FEATURES_DIR",
    "HuRange",
    "IntensityBaseline",
    "IntensityError",
    "baseline_oof",
    "choose_window",
    "intensity_baseline",
    "neighbour_features",
    "slice_features",
    "store_features",
    "to_hu",
]


class IntensityError(RsnaError):
    """The store has no window that shows blood, CSF and bone apart."""


@dataclass(frozen=True)
class HuRange:
    """A closed range of Hounsfield units."""

    low: float
    high: float


#: Acute blood, as a skeptic would count it: above grey matter (about 35-45 HU) and
#: below calcification (above 100 HU).
BLOOD_HU = HuRange(46.0, 100.0)
#: Cerebrospinal fluid (water, 0 HU, plus noise).
CSF_HU = HuRange(0.0, 15.0)
#: Bone for the skull mask: the store's top level in the chosen window, capped here.
BONE_HU = 150.0
#: The features, in order.
FEATURES = ("blood", "near_bone", "near_csf", "thin", "intracranial")
#: "Near" is within this share of the image side (about 7 mm of a 230 mm view).
NEAR = 0.03
_REFERENCE_SIDE = 256  # counts are scaled to a 256 x 256 image


def choose_window(windows: tuple[Window, ...]) -> int:
    """The channel whose window shows CSF, blood and bone apart (lower edge at most
    CSF's low end, upper edge above blood's high end): the narrowest such.

    Raises:
        IntensityError: no window qualifies (e.g. brain alone, 0-80 HU).
    """
    fits = [
        (w.width, i)
        for i, w in enumerate(windows)
        if w.lower <= CSF_HU.low and w.upper >= BLOOD_HU.high + 20
    ]
    if not fits:
        raise IntensityError(
            f"the intensity baseline needs a window from <= {CSF_HU.low:g} HU to >= "
            f"{BLOOD_HU.high + 20:g} HU (subdural or soft tissue). Received: windows="
            + ",".join(f"{w.center:g}/{w.width:g}" for w in windows)
        )
    return min(fits)[1]


def to_hu(levels: np.ndarray, window: Window) -> np.ndarray:
    """The HU a linear window's uint8 level stands for (the inverse of
    :func:`rsna.data.windowing.apply_window`, to within a level)."""
    return window.lower + levels.astype(np.float32) * np.float32(window.width / 255.0)


def slice_features(hu: np.ndarray, *, bone_hu: float = BONE_HU) -> np.ndarray:
    """The :data:`FEATURES` of one (size, size) HU image, as float32 counts scaled to a
    256 x 256 image."""
    side = min(hu.shape)
    bone = hu >= bone_hu
    # inside the skull: the non-bone regions that do not touch the image's border
    _, labels = cv2.connectedComponents((~bone).view(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = ~bone & ~np.isin(labels, border)
    blood = (inside & (hu >= BLOOD_HU.low) & (hu <= BLOOD_HU.high)).view(np.uint8)
    csf = (inside & (hu >= CSF_HU.low) & (hu <= CSF_HU.high)).view(np.uint8)
    reach = 2 * max(1, round(NEAR * side)) + 1
    near = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach))
    opened = cv2.morphologyEx(blood, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    counts = [
        blood.sum(),
        (blood & cv2.dilate(bone.view(np.uint8), near)).sum(),
        (blood & cv2.dilate(csf, near)).sum(),
        (blood & (1 - opened)).sum(),
        inside.sum(),
    ]
    return np.asarray(counts, np.float32) * np.float32((_REFERENCE_SIDE / side) ** 2)


def store_features(images, image_ids) -> pd.DataFrame:
    """:func:`slice_features` of every image of an :class:`~rsna.data.cache.ImageCache`
    (or any source with ``read``, ``readable`` and ``spec``), with a progress bar; an
    unreadable slice gets NaN. Index: image ID; columns: :data:`FEATURES`.

    Raises:
        IntensityError: see :func:`choose_window`.
    """
    channel = choose_window(images.spec.windows)
    window = images.spec.windows[channel]
    rows = np.full((len(image_ids), len(FEATURES)), np.nan, np.float32)
    for n, image_id in enumerate(progress(image_ids, desc="intensity", unit="slice")):
        if images.readable(image_id):
            rows[n] = slice_features(to_hu(images.read(image_id)[..., channel], window))
    index = pd.Index(list(image_ids), name="image_id")
    return pd.DataFrame(rows, index=index, columns=list(FEATURES))


def neighbour_features(features: pd.DataFrame, slices: pd.DataFrame) -> pd.DataFrame:
    """`features` with the slice below's and above's appended (``below_*``, ``above_*``),
    by ``series_uid`` and ``slice_index`` of `slices` (indexed by image ID,
    :func:`rsna.data.series.neighbours`); a series' end, or a neighbour without features,
    repeats the slice's own."""
    table = neighbours(slices, features.index, context=1)
    own = features.to_numpy()
    parts = [features]
    for name, column in (("below", 0), ("above", 2)):
        values = features.reindex(table[:, column]).to_numpy()
        values = np.where(np.isnan(values), own, values)
        parts.append(pd.DataFrame(values, index=features.index, columns=[f"{name}_{c}" for c in features.columns]))  # fmt: skip
    return pd.concat(parts, axis=1)


def baseline_oof(features: pd.DataFrame, labels: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """Out-of-fold probabilities of one logistic regression per label on
    ``log1p(features)``, standardised, trained on the other folds (`folds`: image ID ->
    fold). A label without both classes in the training folds predicts their mean. An
    image without features (NaN) gets the training folds' means. Columns: LABELS."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ids = features.index[features.index.isin(labels.index) & features.index.isin(folds.index)]
    x = np.log1p(features.loc[ids].to_numpy(np.float64))
    y = labels.loc[ids, list(LABELS)].to_numpy()
    fold = folds.loc[ids].to_numpy()
    known = ~np.isnan(x).any(axis=1)
    out = np.empty(y.shape, np.float64)
    for k in np.unique(fold):
        train, test = (fold != k) & known, fold == k
        for j in range(len(LABELS)):
            mean = float(y[train, j].mean())
            out[test, j] = mean
            if 0 < mean < 1:
                model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
                model.fit(x[train], y[train, j])
                rows = test & known
                if rows.any():
                    out[rows, j] = model.predict_proba(x[rows])[:, 1]
    return pd.DataFrame(out, index=ids, columns=list(LABELS))


#: Where the features of a store are kept, in the work or run folder: intensity/<store>.parquet.
FEATURES_DIR = "intensity"


@dataclass(frozen=True)
class IntensityBaseline:
    """The baseline's out-of-fold probabilities, from the slice alone and with the
    slices above and below."""

    slice: pd.DataFrame
    neighbours: pd.DataFrame


def intensity_baseline(work_dir, store_path, *, keep_in=None) -> IntensityBaseline:
    """The baseline on a prepared work folder's labels, folds and the store at
    `store_path`; the features are computed once per store and kept in
    ``<keep_in>/intensity/<store>.parquet`` (`keep_in`: the work folder by default; a
    run folder when the work folder is read-only, as an earlier session's on Kaggle).

    Raises:
        IntensityError: see :func:`choose_window`.
        rsna.data.cache.CacheError, rsna.data.folds.FoldError: no store, or no folds.
    """
    from pathlib import Path

    from rsna import files
    from rsna.data.cache import ImageCache
    from rsna.data.folds import FOLDS_FILE, read_folds
    from rsna.data.metadata import read_metadata, read_prepared_labels

    work_dir, store_path = Path(work_dir), Path(store_path)
    labels = read_prepared_labels(work_dir)
    folds = read_folds(work_dir / FOLDS_FILE)
    kept = Path(keep_in or work_dir) / FEATURES_DIR / f"{store_path.name}.parquet"
    ids = labels.index[labels.index.isin(folds.index)]
    features = pd.read_parquet(kept) if kept.is_file() else None
    if features is None or not ids.isin(features.index).all():
        store = ImageCache(store_path)
        features = store_features(store, [i for i in ids if i in store])
        files.write_parquet(features, kept)
    features = features.loc[features.index.isin(ids)]
    slices = read_metadata(work_dir)[["series_uid", "slice_index"]]
    return IntensityBaseline(
        slice=baseline_oof(features, labels, folds),
        neighbours=baseline_oof(neighbour_features(features, slices), labels, folds),
    )
