"""Bootstrap confidence intervals of test AUC over the test rows, paired across methods.

Every point of a dataset scores the same test rows (same order), so one seeded draw of row
weights (multinomial counts: each resample is ``n`` rows drawn with replacement) serves every
point: a method's interval, its mean over seeds, and a difference of two methods are computed on
the same resamples (a paired bootstrap: the test set's shared difficulty cancels in a Δ).

AUC of a resample is the weighted Mann-Whitney statistic over the full-sample sort order (ties
count one half), so a resample costs O(n) after one sort per score vector.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
    >>> float(weighted_auc(y, s, np.ones((1, 4)))[0])
    0.75
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK = 64  # resamples per block of counts (a block is CHUNK x n floats)


class _Sorted:
    """One score vector's sort order and, for its positive rows, where their tie group starts and ends."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")
        ranked = scores[self.order]
        group_start = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        group = np.cumsum(np.r_[True, ranked[1:] != ranked[:-1]]) - 1
        bounds = np.r_[group_start, len(ranked)]
        self.neg = ~labels[self.order].astype(bool)
        positives = np.flatnonzero(~self.neg)
        self.pos_at = self.order[positives]  # original row of each positive, in sorted order
        self.start, self.end = bounds[group[positives]], bounds[group[positives] + 1]

    def aucs(self, weights: np.ndarray) -> np.ndarray:
        neg = np.where(self.neg, weights[:, self.order], 0.0)
        cum = np.concatenate([np.zeros((len(weights), 1), weights.dtype), np.cumsum(neg, axis=1)], axis=1)
        pos = weights[:, self.pos_at]
        # a positive beats the negatives below its tie group and half of those tied with it
        wins = (pos * 0.5 * (cum[:, self.start] + cum[:, self.end])).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return wins / (pos.sum(axis=1) * cum[:, -1])


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC under each row of ``weights`` (shape ``(B, n)``): one value per row."""
    return _Sorted(labels, scores).aucs(weights)


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap counts, ``(≤CHUNK, n)`` each, ``resamples`` rows in all; seeded."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        b = min(CHUNK, resamples - done)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)
        done += b


def bootstrap_aucs(labels: np.ndarray, scores: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Each score vector's AUC on the same ``resamples`` bootstrap resamples of the rows."""
    prepared = {name: _Sorted(labels, s) for name, s in scores.items()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in scores}
    for counts in resample_counts(len(labels), resamples, seed):
        for name, sorted_scores in prepared.items():
            out[name].append(sorted_scores.aucs(counts))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of ``samples`` (NaN resamples, e.g. one class only, left out)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
