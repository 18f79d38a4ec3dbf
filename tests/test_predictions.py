"""rsna.predictions: the fold ensemble in closed form, and the prior for missing images."""

from __future__ import annotations

import numpy as np

from rsna.predictions import combine


def test_fold_ensemble_rules():
    a, b = np.full((1, 6), 0.2), np.full((1, 6), 0.8)
    np.testing.assert_allclose(combine([a, b]), 0.5)
    np.testing.assert_allclose(combine([a, b], how="logit_mean"), 0.5)
    np.testing.assert_allclose(
        combine([np.full((1, 6), 0.9), np.full((1, 6), 0.99)], how="logit_mean"),
        1 / (1 + np.exp(-(np.log(9) + np.log(99)) / 2)),
    )
