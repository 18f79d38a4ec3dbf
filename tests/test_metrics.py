"""rsna.metrics: the competition metric against sklearn, closed forms, logit and prior."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from rsna.data.labels import LABELS
from rsna.metrics import (
    EPS,
    PRIOR_EPS,
    WEIGHTS,
    logit,
    per_label_log_loss,
    prior_predictions,
    sigmoid,
    weighted_log_loss,
)


def random_case(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < 0.15).astype(float)
    p = np.clip(rng.beta(0.5, 2.0, (n, 6)), 0, 1)
    p[:3, :3] = [0.0, 1.0, 1e-12]  # edge values that clipping must handle
    return y, p


def test_weights_are_the_competitions():
    assert WEIGHTS.tolist() == [1, 1, 1, 1, 1, 2] and LABELS[-1] == "any"


def test_matches_sklearn_log_loss_on_flattened_rows_to_1e9():
    y, p = random_case()
    expected = log_loss(
        y.ravel(),
        np.clip(p, EPS, 1 - EPS).ravel(),
        sample_weight=np.tile(WEIGHTS, len(y)),
        labels=[0, 1],
    )
    assert abs(weighted_log_loss(y, p) - expected) < 1e-9


def test_closed_forms():
    y = np.zeros((4, 6))
    assert weighted_log_loss(y, np.full((4, 6), 0.5)) == pytest.approx(np.log(2), abs=1e-12)
    perfect = weighted_log_loss(y, np.zeros((4, 6)))
    assert perfect == pytest.approx(-np.log1p(-EPS), abs=1e-15)
    # One wrong `any` counts twice as much as one wrong subtype.
    wrong_any = np.zeros((1, 6))
    wrong_any[0, 5] = 0.5
    wrong_sub = np.zeros((1, 6))
    wrong_sub[0, 0] = 0.5
    base = -np.log1p(-EPS)
    assert weighted_log_loss(np.zeros((1, 6)), wrong_any) - base == pytest.approx(
        2 * (weighted_log_loss(np.zeros((1, 6)), wrong_sub) - base)
    )


def test_dataframes_align_by_image_and_column():
    y, p = random_case(20)
    ids = [f"ID_{i:03x}" for i in range(20)]
    truth = pd.DataFrame(y, index=ids, columns=list(LABELS))
    preds = pd.DataFrame(p, index=ids, columns=list(LABELS)).iloc[::-1][list(reversed(LABELS))]
    assert weighted_log_loss(truth, preds) == pytest.approx(weighted_log_loss(y, p), abs=1e-12)
    with pytest.raises(ValueError, match="1 images have no prediction"):
        weighted_log_loss(truth, preds.iloc[1:])


def test_per_label_and_prior():
    y, p = random_case(50)
    scores = per_label_log_loss(y, p)
    assert list(scores) == [*LABELS, "weighted"]
    assert scores["weighted"] == pytest.approx((sum(scores[c] for c in LABELS) + scores["any"]) / 7)
    labels = pd.DataFrame(y, columns=list(LABELS))
    prior = prior_predictions(labels, pd.Index(["ID_a", "ID_b"]))
    np.testing.assert_allclose(prior.to_numpy(), np.tile(y.mean(axis=0), (2, 1)))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"must both be \(n, 6\)"):
        weighted_log_loss(np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        weighted_log_loss(np.zeros((1, 6)), np.full((1, 6), np.nan))


def test_logit_closed_forms_and_round_trip():
    assert logit(0.5) == 0.0 and logit(0.9) == pytest.approx(np.log(9), abs=1e-12)
    p = np.linspace(0.001, 0.999, 41)
    np.testing.assert_allclose(sigmoid(logit(p)), p, atol=1e-12)
    # The clip: 0 and 1 become +-log((1 - eps) / eps), finite.
    assert logit(0.0) == pytest.approx(np.log(EPS / (1 - EPS)), abs=1e-9)
    assert logit(1.0, eps=PRIOR_EPS) == pytest.approx(np.log((1 - PRIOR_EPS) / PRIOR_EPS))
