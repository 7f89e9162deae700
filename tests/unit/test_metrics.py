"""``recsys.metrics`` against scikit-learn, with ties and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from recsys.metrics import auc, logloss


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_continuous(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(5000) < 0.3).astype(np.float32)
    s = rng.normal(size=5000) + y
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("levels", [2, 5, 50])
def test_auc_matches_sklearn_with_ties(levels: int) -> None:
    rng = np.random.default_rng(levels)
    y = rng.integers(0, 2, 4000)
    s = rng.integers(0, levels, 4000).astype(np.float32) + 0.5 * y * (rng.random(4000) < 0.5)
    assert len(np.unique(s)) < 200
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_label_dtypes_and_exact_values() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    for labels in (y, y.astype(bool), y.astype(np.float32), y.tolist()):
        assert auc(labels, s) == 0.75
    assert auc(y, np.array([1, 2, 3, 4])) == 1.0
    assert auc(y, np.array([4, 3, 2, 1])) == 0.0
    assert auc(y, np.zeros(4)) == 0.5


@pytest.mark.parametrize("labels", [np.zeros(10), np.ones(10), np.zeros(1)])
def test_auc_single_class_is_a_clear_error(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc(labels, np.arange(len(labels), dtype=np.float64))


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (np.zeros(0), np.zeros(0), "empty"),
        (np.array([0, 1, 1]), np.array([0.1, 0.2]), "length"),
        (np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]), "0 or 1"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "NaN"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "1-D"),
    ],
)
def test_auc_bad_input(labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auc(labels, scores)


def _rel(dtype: type) -> float:
    """scikit-learn sums float32 probabilities in float32; ``logloss`` always uses float64."""
    return 1e-6 if dtype == np.float32 else 1e-9


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logloss_matches_sklearn(dtype: type) -> None:
    rng = np.random.default_rng(1)
    p = rng.random(3000).astype(dtype)
    y = (rng.random(3000) < p).astype(np.float32)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=_rel(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logloss_clips_like_sklearn(dtype: type) -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.5], dtype=dtype)
    assert np.isfinite(logloss(y, p))
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=_rel(dtype))


def test_logloss_single_class_and_errors() -> None:
    assert logloss(np.ones(3), np.array([0.5, 0.5, 0.5])) == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logloss(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="length"):
        logloss(np.array([0, 1]), np.array([0.5]))


def test_auc_is_vectorised_on_a_million_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(1_000_000) < 0.2
    s = rng.random(1_000_000).astype(np.float32)
    assert 0.49 < auc(y, s) < 0.51
