"""``rsna blend --stack lightgbm``: a second-level model over the runs' predictions.

The 3rd and 11th places stacked their CNNs with gradient-boosted trees that saw each
slice's predictions next to its neighbours' along z. Here, per label, a LightGBM
classifier reads, for every image:

* each run's six logits, and the same at the slices ``±1 .. ±neighbours`` by z (the
  series' edge slice repeats, as in :func:`rsna.data.series.neighbours`);
* each run's series maximum and mean of its six logits;
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
    "STACKERS",
    "StackError",
    "StackParams",
    "StackResult",
    "describe",
    "stack_features",
    "stack_runs",
    "strongest_features",
]

#: The second-level models ``rsna blend --stack`` offers.
STACKERS = ("lightgbm",)


class StackError(RsnaError):
    """The stacker cannot run: LightGBM is missing, or an option is out of range."""


@dataclass(frozen=True)
class StackParams:
    """The stacker's options; the tree settings are LightGBM's, kept small for a few
    hundred features (11th place used trees of this size over neighbour predictions)."""

    neighbours: int = 2  # slices on each side, by z
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


def _series_key(slices: pd.DataFrame) -> np.ndarray:
    """The series of each image; an image without one is a series of its own."""
    uid = slices["series_uid"].to_numpy(object)
    return np.where(uid == "", slices.index.to_numpy(object), uid)


def stack_features(
    logits: dict[str, pd.DataFrame], slices: pd.DataFrame, *, neighbours: int
) -> tuple[np.ndarray, list[str]]:
    """The (images, features) float32 matrix and the feature names, rows in `slices` order.

    Args:
        logits: run name -> image ID -> LABELS logits, covering `slices`' images.
        slices: ``series_uid``, ``slice_index`` and ``z`` (metadata) per image ID.
        neighbours: slices on each side.
    """
    ids = slices.index
    table = slice_neighbours(slices, ids, context=neighbours)
    offsets = range(-neighbours, neighbours + 1)
    key = _series_key(slices)
    columns, names = [], []
    for r, frame in enumerate(logits.values()):
        values = frame.loc[ids, list(LABELS)].to_numpy(np.float32)
        for column, offset in enumerate(offsets):
            rows = ids.get_indexer(table[:, column]) if offset else np.arange(len(ids))
            columns.append(values[rows])
            names += [f"r{r}_{label}_{offset:+d}" for label in LABELS]
        grouped = pd.DataFrame(values, index=key).groupby(level=0)
        columns += [grouped.transform("max").to_numpy(), grouped.transform("mean").to_numpy()]
        names += [f"r{r}_{label}_series_{s}" for s in ("max", "mean") for label in LABELS]
    columns.append(_geometry(slices, key))
    names += list(GEOMETRY)
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
    x, names = stack_features(oof_logits, train_slices.loc[index], neighbours=params.neighbours)
    x_test, _ = stack_features(test_logits, test_slices, neighbours=params.neighbours)
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
