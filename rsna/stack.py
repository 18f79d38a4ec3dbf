"""``rsna blend --stack lightgbm``: a second-level model over the runs' predictions.

The 3rd and 11th places stacked their CNNs with gradient-boosted trees that saw each
slice's predictions next to its neighbours' along z. Here, per label, a LightGBM
classifier reads, for every image:

* each run's six logits, and the same at the slices ``±1 .. ±neighbours`` by z (the
  series' edge slice repeats, as in :func:`rsna.data.series.neighbours`);
* each run's series maximum and mean of its six logits, and the same over the study;
* each run's view of the patient's other studies (3rd place's patient context): per label
  the maximum logit, the mean logit and the number of slices above
  :data:`ABOVE_LOGIT`, missing (NaN, which the trees route on their own) for a patient
  with one study; and how many other studies the patient has;
* the slice's :data:`rsna.data.series.GEOMETRY`: its place in the series and its z gaps.

Out of fold only: each fold is predicted by trees trained on the other folds, so the
CV is not fit on what it scores, and the test by the mean of those fold models. The
test features come from the runs' submissions (their fold ensembles). LightGBM is an
optional extra (``pip install 'rsna[stack]'``), imported only here.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from rsna.data.labels import LABELS
from rsna.data.series import GEOMETRY, geometry
from rsna.data.series import neighbours as slice_neighbours
from rsna.errors import DataWarning, RsnaError
from rsna.metrics import PRIOR_EPS, sigmoid
from rsna.parallel import progress

__all__ = [
    "ABOVE_LOGIT",
    "STACKERS",
    "StackError",
    "StackParams",
    "StackResult",
    "describe",
    "max_of_others",
    "patient_context",
    "stack_features",
    "stack_runs",
    "strongest_features",
]

#: The second-level models ``rsna blend --stack`` offers.
STACKERS = ("lightgbm",)
#: A slice "above the threshold" in the patient features: logit > 0, probability > 0.5.
ABOVE_LOGIT = 0.0


class StackError(RsnaError):
    """The stacker cannot run: LightGBM is missing, or an option is out of range."""


@dataclass(frozen=True)
class StackParams:
    """The stacker's options; the tree settings are LightGBM's, kept small for a few
    hundred features (11th place used trees of this size over neighbour predictions)."""

    neighbours: int = 2  # slices on each side, by z
    patient: bool = True  # the study and the patient's other studies (3rd place's context)
    trees: int = 300
    learning_rate: float = 0.03
    leaves: int = 15
    min_child_samples: int = 20
    l2: float = 10.0  # LightGBM's reg_lambda: shrinks leaves with little data behind them
    subsample: float = 0.8
    colsample: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("neighbours", self.neighbours, 0, 16),
            ("trees", self.trees, 1, 100_000),
            ("leaves", self.leaves, 2, 4096),
            ("min_child_samples", self.min_child_samples, 1, 1_000_000),
        )
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise StackError(
                    f"`{name}` must be an integer in [{low}, {high}]. Received: {name}={value!r}"
                )
        if not isinstance(self.patient, bool):
            raise StackError(f"`patient` must be true or false. Received: patient={self.patient!r}")
        for name in ("learning_rate", "subsample", "colsample"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise StackError(f"`{name}` must be in (0, 1]. Received: {name}={value!r}")
        if not 0.0 <= self.l2 < float("inf"):
            raise StackError(f"`l2` must be >= 0 and finite. Received: l2={self.l2!r}")


@dataclass(frozen=True)
class StackResult:
    oof: pd.DataFrame  # each fold predicted by trees trained on the other folds
    test: pd.DataFrame  # the mean of the fold models
    importance: pd.DataFrame  # feature -> gain per label, summed over folds
    constant: dict[str, list[int]]  # label -> folds whose training rows had one class only


def _group_key(slices: pd.DataFrame, column: str) -> np.ndarray:
    """Each image's `column` (a series, study or patient ID); an image without one (an
    empty value, or no such column) is a group of its own."""
    own = slices.index.to_numpy(object)
    if column not in slices.columns:
        return own
    uid = slices[column].fillna("").to_numpy(object)
    return np.where(uid == "", own, uid)


def _series_key(slices: pd.DataFrame) -> np.ndarray:
    """The series of each image; an image without one is a series of its own."""
    return _group_key(slices, "series_uid")


def max_of_others(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per row of `values` (n, labels): the column maxima over the other rows of its
    `group` (n,) integer codes; NaN for a row alone in its group."""
    out = np.full(values.shape, np.nan)
    if len(values) == 0:
        return out
    for j in range(values.shape[1]):
        order = np.lexsort((-values[:, j], group))
        g = group[order]
        starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        sizes = np.diff(np.r_[starts, len(g)])
        of_row = np.repeat(np.arange(len(starts)), sizes)
        first = np.zeros(len(g), bool)
        first[starts] = True
        top1 = values[order[starts], j]
        top2 = np.where(sizes > 1, values[order[np.minimum(starts + 1, len(g) - 1)], j], np.nan)
        out[order, j] = np.where(first, top2[of_row], top1[of_row])
    return out


def patient_context(
    values: np.ndarray, study: np.ndarray, patient: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, over its patient's *other* studies: (n, 3 * labels) the maximum, the
    mean and the count above :data:`ABOVE_LOGIT` of `values` per label, NaN without
    another study; and (n,) how many other studies the patient has.

    Args:
        values: (n, labels) logits.
        study, patient: (n,) each image's study and patient IDs.
    """
    s_code = pd.factorize(pd.Series(study, dtype=object))[0]
    per = pd.DataFrame(values).groupby(s_code)
    s_max, s_sum, s_n = per.max().to_numpy(), per.sum().to_numpy(), per.size().to_numpy()
    s_above = (pd.DataFrame(values > ABOVE_LOGIT).groupby(s_code).sum()).to_numpy()
    first = pd.Series(np.arange(len(study))).groupby(s_code).first().to_numpy()
    p_code = pd.factorize(pd.Series(patient, dtype=object)[first].to_numpy())[0]
    by_patient = pd.DataFrame(np.hstack([s_sum, s_above, s_n[:, None]])).groupby(p_code)
    totals = by_patient.transform("sum").to_numpy()
    labels = values.shape[1]
    other_n = totals[:, -1] - s_n
    with np.errstate(invalid="ignore", divide="ignore"):
        other_mean = (totals[:, :labels] - s_sum) / other_n[:, None]
    other_above = totals[:, labels : 2 * labels] - s_above
    other_max = max_of_others(s_max, p_code)
    alone = other_n == 0
    other_mean[alone], other_above = np.nan, np.where(alone[:, None], np.nan, other_above)
    studies = np.bincount(p_code)[p_code] - 1
    per_study = np.hstack([other_max, other_mean, other_above])
    return per_study[s_code], studies[s_code].astype(np.float64)


def stack_features(
    logits: dict[str, pd.DataFrame],
    slices: pd.DataFrame,
    *,
    neighbours: int,
    patient: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """The (images, features) float32 matrix and the feature names, rows in `slices` order.

    Args:
        logits: run name -> image ID -> LABELS logits, covering `slices`' images.
        slices: ``series_uid``, ``slice_index`` and ``z`` (metadata) per image ID, and
            ``study_uid`` and ``patient_id`` (without them, each image is its own study
            and patient).
        neighbours: slices on each side.
        patient: add the study's and the patient's other studies' summaries.
    """
    ids = slices.index
    table = slice_neighbours(slices, ids, context=neighbours)
    offsets = range(-neighbours, neighbours + 1)
    key = _series_key(slices)
    study, patients = _group_key(slices, "study_uid"), _group_key(slices, "patient_id")
    columns, names = [], []
    for r, frame in enumerate(logits.values()):
        values = frame.loc[ids, list(LABELS)].to_numpy(np.float32)
        for column, offset in enumerate(offsets):
            rows = ids.get_indexer(table[:, column]) if offset else np.arange(len(ids))
            columns.append(values[rows])
            names += [f"r{r}_{label}_{offset:+d}" for label in LABELS]
        for level, by in (("series", key), ("study", study))[: 2 if patient else 1]:
            grouped = pd.DataFrame(values, index=by).groupby(level=0)
            columns += [grouped.transform("max").to_numpy(), grouped.transform("mean").to_numpy()]
            names += [f"r{r}_{label}_{level}_{s}" for s in ("max", "mean") for label in LABELS]
        if patient:
            others, studies = patient_context(values, study, patients)
            columns.append(others)
            kinds = ("max", "mean", "above")
            names += [f"r{r}_{label}_patient_others_{s}" for s in kinds for label in LABELS]
    columns.append(_geometry(slices, key))
    names += list(GEOMETRY)
    if patient:
        columns.append(studies[:, None])
        names.append("patient_other_studies")
    return np.hstack(columns).astype(np.float32), names


def _geometry(slices: pd.DataFrame, key: np.ndarray) -> np.ndarray:
    """The :data:`GEOMETRY` columns of every image, in `slices` order."""
    out = np.zeros((len(slices), len(GEOMETRY)), np.float32)
    frame = pd.DataFrame(
        {"key": key, "slice_index": slices["slice_index"].to_numpy(), "z": slices["z"].to_numpy()}
    )
    for _, rows in frame.sort_values(["key", "slice_index"]).groupby("key", sort=False):
        out[rows.index.to_numpy()] = geometry(rows["z"].to_numpy())
    return out


def _mean_logits(logits: dict[str, pd.DataFrame], index: pd.Index) -> np.ndarray:
    """(images, labels): the runs' mean logit, the equal blend the trees start from."""
    return np.mean(
        [f.loc[index, list(LABELS)].to_numpy(np.float64) for f in logits.values()], axis=0
    )


def _lightgbm():
    try:
        import lightgbm
    except ImportError as exc:
        raise StackError(
            "`--stack lightgbm` needs LightGBM, which is not installed; "
            "run: pip install 'rsna[stack]'"
        ) from exc
    return lightgbm


def _classifier(params: StackParams):
    return _lightgbm().LGBMClassifier(
        n_estimators=params.trees,
        learning_rate=params.learning_rate,
        num_leaves=params.leaves,
        min_child_samples=params.min_child_samples,
        subsample=params.subsample,
        subsample_freq=1,
        colsample_bytree=params.colsample,
        reg_lambda=params.l2,
        random_state=params.seed,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )


def stack_runs(
    oof_logits: dict[str, pd.DataFrame],
    test_logits: dict[str, pd.DataFrame],
    truth: pd.DataFrame,
    folds: pd.Series,
    train_slices: pd.DataFrame,
    test_slices: pd.DataFrame,
    *,
    params: StackParams = StackParams(),
) -> StackResult:
    """Out-of-fold LightGBM per label over :func:`stack_features`.

    A label whose training rows hold one class only (a rare subtype on tiny data) is
    predicted by its training mean, with a :class:`rsna.errors.DataWarning`, and listed
    in ``constant``.
    """
    _lightgbm()
    index = folds.index
    x, names = stack_features(
        oof_logits, train_slices.loc[index], neighbours=params.neighbours, patient=params.patient
    )
    x_test, _ = stack_features(
        test_logits, test_slices, neighbours=params.neighbours, patient=params.patient
    )
    y = truth.loc[index, list(LABELS)].to_numpy(np.float64)
    base, base_test = _mean_logits(oof_logits, index), _mean_logits(test_logits, test_slices.index)
    fold_of = folds.to_numpy()
    keys = sorted(np.unique(fold_of))
    oof = np.empty_like(y)
    test = np.zeros((len(test_slices), len(LABELS)))
    gain = np.zeros((len(names), len(LABELS)))
    constant: dict[str, list[int]] = {}
    jobs = [(j, k) for j in range(len(LABELS)) for k in keys]
    for j, k in progress(jobs, desc="stack", unit="model"):
        held = fold_of == k
        target = y[~held, j]
        if target.min() == target.max():
            mean = float(np.clip(target.mean(), PRIOR_EPS, 1 - PRIOR_EPS))
            oof[held, j] = mean
            test[:, j] += mean / len(keys)
            constant.setdefault(LABELS[j], []).append(int(k))
            continue
        model = _classifier(params)
        with warnings.catch_warnings():  # sklearn's "X does not have valid feature names"
            warnings.simplefilter("ignore", UserWarning)
            model.fit(x[~held], target.astype(np.int32), init_score=base[~held, j])
            oof[held, j] = sigmoid(model.predict(x[held], raw_score=True) + base[held, j])
            test[:, j] += sigmoid(model.predict(x_test, raw_score=True) + base_test[:, j]) / len(
                keys
            )
        gain[:, j] += model.booster_.feature_importance(importance_type="gain")
    for label, which in constant.items():
        warnings.warn(
            f"stack: {label} has one class only in the training rows of fold(s) {which}; "
            "those folds predict its training mean",
            DataWarning,
            stacklevel=2,
        )
    columns = list(LABELS)
    return StackResult(
        pd.DataFrame(oof, index=index, columns=columns).rename_axis("image_id"),
        pd.DataFrame(test, index=test_slices.index, columns=columns).rename_axis("image_id"),
        pd.DataFrame(gain, index=names, columns=columns),
        constant,
    )


def strongest_features(result: StackResult, *, top: int) -> pd.Series:
    """The `top` features by gain, summed over labels and folds, strongest first."""
    return result.importance.sum(axis=1).sort_values(ascending=False).head(top)


def describe(params: StackParams, result: StackResult, runs: list[str], top: int = 15) -> dict:
    """The stacker's part of ``evaluate.json``: options, run codes, strongest features."""
    total = strongest_features(result, top=top)
    return {
        "stack": "lightgbm",
        "params": asdict(params),
        "run_codes": {f"r{i}": name for i, name in enumerate(runs)},
        "constant_labels": result.constant,
        "top_features_by_gain": {k: round(float(v), 3) for k, v in total.items()},
    }
