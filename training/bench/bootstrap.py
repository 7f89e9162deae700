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

from recsys.metrics import auc

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


Replicates = list[tuple[np.ndarray, np.ndarray]]  # (labels, scores) per replicate


def paired_lead(
    a: Replicates, b: Replicates, resamples: int = 1000, seed: int = 0, names: tuple[str, str] = ("a", "b"), rows: list[int] | None = None
) -> tuple[float, float]:
    """Mean over replicates of AUC(a[i]) − AUC(b[i]) and its bootstrap standard error.

    Replicate ``i`` of both scores the same rows (raises naming ``names`` otherwise). ``rows[i]``
    names the row set replicate ``i`` is on (None: all on one set, e.g. seeds on one validation
    split): replicates on one row set share one draw of resamples, so its rows' noise is counted
    once; other row sets (the held-out folds of a cross-validation) are resampled on their own,
    so their noise averages out.

    Example:
        >>> y = np.array([0.0, 1.0, 0.0, 1.0]); s = np.array([0.1, 0.9, 0.2, 0.8])
        >>> lead, se = paired_lead([(y, s)], [(y, s[::-1].copy())], resamples=50)
        >>> round(lead, 2)
        1.0
    """
    keys = [0] * len(a) if rows is None else list(rows)
    first: dict[int, np.ndarray] = {}
    for i, ((la, _), (lb, _)) in enumerate(zip(a, b)):
        ref = first.setdefault(keys[i], la)
        if not (la.shape == lb.shape == ref.shape and np.array_equal(la, lb) and np.array_equal(la, ref)):
            raise ValueError(f"trials {names[0]} and {names[1]} scored different validation rows; a paired comparison needs the same rows")
    diffs = []
    for g, key in enumerate(first):
        group = [i for i, k in enumerate(keys) if k == key]
        vectors = {f"a{i}": a[i][1] for i in group} | {f"b{i}": b[i][1] for i in group}
        boot = bootstrap_aucs(first[key], vectors, resamples, seed + g)
        diffs += [boot[f"a{i}"] - boot[f"b{i}"] for i in group]
    lead = float(np.mean([auc(la, pa) - auc(lb, pb) for (la, pa), (lb, pb) in zip(a, b)]))
    return lead, float(np.nanstd(np.mean(diffs, axis=0), ddof=1))


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of ``samples`` (NaN resamples, e.g. one class only, left out)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
