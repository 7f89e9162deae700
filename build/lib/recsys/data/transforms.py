"""Dense transforms, chosen per column in the schema YAML and recorded in ``dataset.json``.

* ``slog1p`` (default): ``sign(x)·log1p(|x|)``;
* ``none``: the value as float32;
* ``standardize``: ``(x - mean) / std`` with the train split's mean and standard deviation;
* ``quantile``: the bucket between quantile edges of the train values (estimated from a seeded
  uniform sample of up to ``SAMPLE_SIZE`` values), as a sparse field whose raw value is the
  bucket number as a string ("0", "1", ...), so it gets an embedding like any categorical field.

Missing values (empty, null, NaN) become 0 (``quantile``: the missing value). Conversion and
serving call the same ``apply_dense`` and ``bucket_ids``, so a served request is transformed
exactly as its training rows were.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys.data.parse import MISSING_ID, slog1p
from recsys.features import TransformParams
from recsys.hashing import hash64_strings

TransformKind = Literal["slog1p", "standardize", "quantile", "none"]
TRANSFORMS: tuple[str, ...] = ("slog1p", "standardize", "quantile", "none")
DEFAULT_BUCKETS = 16
SAMPLE_SIZE = 1 << 18


@dataclass(frozen=True)
class TransformSpec:
    """The transform of one dense column."""

    kind: TransformKind = "slog1p"
    buckets: int = DEFAULT_BUCKETS

    @property
    def needs_stats(self) -> bool:
        return self.kind in ("standardize", "quantile")


def stage_dense(values: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """What the first pass stages: final float32 values, or raw float64 where train statistics are needed."""
    if spec.kind == "slog1p":
        return slog1p(values)
    if spec.kind == "none":
        return np.nan_to_num(values, nan=0.0).astype(np.float32)
    return values.astype(np.float64, copy=False)


def apply_dense(values: np.ndarray, kind: str | None, params: TransformParams | None) -> np.ndarray:
    """Transformed float32 values of raw float64 ``values`` (NaN = missing -> 0)."""
    values = np.asarray(values, np.float64)
    if kind in (None, "slog1p"):
        return slog1p(values)
    if kind == "none":
        return np.nan_to_num(values, nan=0.0).astype(np.float32)
    if kind == "standardize":
        assert params is not None and params.mean is not None and params.std is not None
        return np.nan_to_num((values - params.mean) / params.std, nan=0.0).astype(np.float32)
    raise ValueError(f"'{kind}' is not a dense transform (quantile fields are sparse: use bucket_ids)")


def bucket_of(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """The quantile bucket (0..len(edges)) of each raw value; NaN gives -1."""
    values = np.asarray(values, np.float64)
    buckets = np.searchsorted(np.asarray(edges, np.float64), np.nan_to_num(values, nan=0.0), side="right")
    return np.where(np.isnan(values), -1, buckets)


def bucket_ids(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Raw ids of the quantile bucket of each raw value (the hash of its number as a string; NaN: missing)."""
    buckets = bucket_of(values, edges)
    ids = bucket_table(len(edges) + 1)[np.maximum(buckets, 0)]
    ids[buckets < 0] = MISSING_ID
    return ids


def bucket_table(buckets: int) -> np.ndarray:
    """Raw ids of buckets 0..buckets-1 (the hash of "0", "1", ...)."""
    return hash64_strings([str(b) for b in range(buckets)])


class DenseStats:
    """Train statistics of one column: count, mean and M2 (Chan et al.), and a uniform sample."""

    def __init__(self, name: str, seed: int, sample: bool) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.seen = 0
        self.sample = np.zeros(SAMPLE_SIZE if sample else 0, np.float64)
        self._rng = np.random.default_rng([seed, zlib.crc32(name.encode())])

    def add(self, values: np.ndarray) -> None:
        """Add the present (non-NaN) values among ``values``."""
        x = values[~np.isnan(values)]
        if not len(x):
            return
        n, mean = len(x), float(np.mean(x))
        delta = mean - self.mean
        total = self.count + n
        self.m2 += float(np.sum((x - mean) ** 2)) + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        if len(self.sample):
            self._reservoir(x)

    def _reservoir(self, x: np.ndarray) -> None:
        cap = len(self.sample)
        fill = min(max(cap - self.seen, 0), len(x))
        self.sample[self.seen : self.seen + fill] = x[:fill]
        rest = x[fill:]
        if len(rest):
            t = self.seen + fill + np.arange(1, len(rest) + 1)  # 1-based index of each later value
            slot = (self._rng.random(len(rest)) * t).astype(np.int64)
            keep = slot < cap
            self.sample[slot[keep]] = rest[keep]  # later values win a shared slot, as in the sequential algorithm
        self.seen += len(x)

    def params(self, spec: TransformSpec) -> TransformParams:
        """The recorded parameters of ``spec`` from these statistics."""
        if spec.kind == "standardize":
            std = float(np.sqrt(self.m2 / self.count)) if self.count else 0.0
            return TransformParams(mean=self.mean, std=std if std > 0 else 1.0)
        values = self.sample[: min(self.seen, len(self.sample))]
        if not len(values):
            return TransformParams(edges=[])
        edges = np.unique(np.quantile(values, np.linspace(0, 1, spec.buckets + 1)[1:-1]))
        return TransformParams(edges=[float(e) for e in edges])


SLOG1P_SPEC = TransformSpec()
