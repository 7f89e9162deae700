"""Binary classification metrics in numpy: exact ROC AUC (ties by average ranks) and log loss.

Both take 1-D arrays of 0/1 labels (any numeric or bool dtype) and scores or probabilities;
they equal ``sklearn.metrics.roc_auc_score`` and ``sklearn.metrics.log_loss`` and run in
``O(n log n)`` and ``O(n)`` without Python loops.

Example:
    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["auc", "logloss"]


def _check(labels: npt.ArrayLike, values: npt.ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat arrays (labels as bool), after checking shapes, emptiness, label values and NaNs."""
    y = np.asarray(labels)
    v = np.asarray(values)
    if y.ndim != 1 or v.ndim != 1:
        raise ValueError(f"labels and {what} must be 1-D, got shapes {y.shape} and {v.shape}")
    if len(y) != len(v):
        raise ValueError(f"labels and {what} differ in length: {len(y)} vs {len(v)}")
    if len(y) == 0:
        raise ValueError("no samples: labels and scores are empty")
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            bad = np.unique(y[(y != 0) & (y != 1)])[:5]
            raise ValueError(f"labels must be 0 or 1, found e.g. {bad.tolist()}")
        y = y == 1
    if not np.issubdtype(v.dtype, np.number) or np.isnan(v).any():
        raise ValueError(f"{what} must be numeric without NaN")
    return y, v


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; tied scores count one half (Mann-Whitney U with average ranks).

    Raises ``ValueError`` when only one class is present (AUC is undefined then).
    """
    y, s = _check(labels, scores, "scores")
    positives = int(np.count_nonzero(y))
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        only = "positive" if negatives == 0 else "negative"
        raise ValueError(f"AUC is undefined: all {len(y)} labels are {only}; both classes are needed")
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    sorted_pos = y[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + ends + 1) / 2.0
    pos_per_group = np.add.reduceat(sorted_pos, starts)
    rank_sum = float(np.dot(pos_per_group, mean_rank))
    return (rank_sum - positives * (positives + 1) / 2.0) / (float(positives) * float(negatives))


def logloss(labels: npt.ArrayLike, probs: npt.ArrayLike) -> float:
    """Mean binary cross-entropy; probabilities are clipped to ``[eps, 1 - eps]`` with ``eps``
    the machine epsilon of their float dtype (float64 for other dtypes), as scikit-learn does."""
    y, p = _check(labels, probs, "probs")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    eps = np.finfo(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64).eps
    p = np.clip(p.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))
