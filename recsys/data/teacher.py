"""The planted click model ("teacher") of ``recsys.data.synthetic``; its docstring describes it.

``build_teacher(profile, seed, scale)`` draws every parameter from ``seed`` and calibrates it on
a pilot sample; ``Teacher.ranks`` / ``Teacher.dense`` draw rows and ``Teacher.logits`` scores them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from recsys.hashing import hash64_strings

__all__ = ["PROFILES", "SparseTeacher", "SynthProfile", "Teacher", "build_teacher", "sigmoid"]

PILOT_ROWS = 1 << 16
KAPPA_STDS = 1.5
# Random streams: numpy generators are seeded with [seed, stream] or [seed, stream, block].
STREAM_TEACHER, STREAM_VALUES, STREAM_DENSE, STREAM_LABELS, STREAM_PILOT, STREAM_BAGS = 0, 1, 2, 3, 4, 5
Extras = dict[int, tuple[np.ndarray, np.ndarray]]  # multi-valued field -> (extra values per row, their ranks)


class SynthProfile(BaseModel):
    """Shape of a synthetic dataset and strength of its teacher (see ``recsys.data.synthetic``).

    ``signal_ref_prob`` / ``signal_tail_power`` / ``signal_min_amplitude`` set how the per-value
    signal fades with popularity; ``shares`` are the variance shares of the first-order, pair,
    dense and non-linear parts; ``scale_from``: cardinalities at least this big follow ``scale``.
    """

    model_config = ConfigDict(extra="forbid")

    cardinalities: list[Annotated[int, Field(ge=2)]] = Field(min_length=2)
    num_dense: int = Field(ge=0)
    latent_dim: int = Field(4, ge=1)
    interaction_pairs: int = Field(8, ge=1)
    interaction_max_cardinality: int | None = None
    zipf_exponent: float = Field(1.1, gt=0)
    zipf_jitter: float = Field(0.15, ge=0)
    target_ctr: float = Field(0.22, gt=0, lt=1)
    target_auc: float = Field(0.80, gt=0.5, lt=1)
    signal_ref_prob: float = Field(5e-3, gt=0)
    signal_tail_power: float = Field(1.0, ge=0)
    signal_min_amplitude: float = Field(0.05, ge=0)
    shares: tuple[float, float, float, float] = (0.6, 0.2, 0.12, 0.08)
    dense_missing_max: float = Field(0.4, ge=0, lt=1)
    scale_from: int = 100_000
    multi_valued: list[int] = Field(default_factory=list, description="0-based fields whose rows hold a bag of values")
    multi_max_len: int = Field(4, ge=1, description="a bag holds 1..multi_max_len values, uniformly")

    def scaled_cardinalities(self, scale: float) -> list[int]:
        """Cardinalities with those of at least ``scale_from`` multiplied by ``scale``."""
        return [max(2, round(c * scale)) if c >= self.scale_from else c for c in self.cardinalities]


PROFILES: dict[str, SynthProfile] = {
    "criteo": SynthProfile(
        cardinalities=[
            1460,
            583,
            1_000_000,
            500_000,
            305,
            24,
            12517,
            633,
            3,
            93145,
            5683,
            800_000,
            3194,
            27,
            14992,
            600_000,
            10,
            5652,
            2173,
            4,
            900_000,
            18,
            15,
            286181,
            105,
            142572,
        ],
        num_dense=13,
        interaction_max_cardinality=2000,
    ),
    "small": SynthProfile(
        cardinalities=[3, 12, 40, 150, 600, 1500, 3000, 5000],
        num_dense=4,
        interaction_pairs=4,
        target_auc=0.78,
        scale_from=1000,
    ),
    # Shaped like small public CTR sets (10-11 fields, 50k-100k rows, 2.7k-5.3k values): 10 sparse
    # fields of 4..1500 values (4,470 in all), steep Zipf popularity, 2 dense; use --rows 80000.
    "small_real": SynthProfile(
        cardinalities=[4, 9, 25, 60, 120, 250, 400, 700, 1400, 1500],
        num_dense=2,
        interaction_pairs=6,
        zipf_exponent=1.2,
        target_auc=0.78,
        signal_ref_prob=2e-3,
        scale_from=10**9,
        multi_valued=[7],
    ),
}


def _rank_probs(n: int, s: float) -> np.ndarray:
    """``P(rank)`` of the discretised power law over ``n`` ranks."""
    edges = np.arange(1, n + 2, dtype=np.float64)
    if abs(s - 1.0) < 1e-9:
        return np.diff(np.log(edges)) / math.log(n + 1)
    return np.diff(edges ** (1 - s)) / ((n + 1) ** (1 - s) - 1)


def _sample_ranks(u: np.ndarray, n: int, s: float) -> np.ndarray:
    """Inverse CDF of the power law: uniforms to ranks in ``[0, n)``."""
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * math.log(n + 1))
    else:
        x = (1.0 + u * ((n + 1) ** (1 - s) - 1)) ** (1.0 / (1 - s))
    return np.minimum(x.astype(np.int64) - 1, n - 1)


@dataclass
class SparseTeacher:
    """One sparse field: value distribution and per-value parameters (row ``head`` = the tail, zero)."""

    name: str
    cardinality: int
    exponent: float
    perm: np.ndarray  # value number of each rank
    first: np.ndarray  # [head + 1] float32
    latent: np.ndarray  # [head + 1, k] float32 ([1, k] zeros for a field in no pair)

    @property
    def head(self) -> int:
        return len(self.first) - 1

    def param_rows(self, ranks: np.ndarray) -> np.ndarray:
        return np.minimum(ranks, self.head)

    def vectors(self, ranks: np.ndarray) -> np.ndarray:
        """``[n, k]`` latent vectors of ``ranks``."""
        return np.take(self.latent, np.minimum(ranks, len(self.latent) - 1), axis=0)

    def raw_ids(self, ranks: np.ndarray) -> np.ndarray:
        """``hash64_strings("<name>_<value number>")`` of each rank."""
        numbers = pc.cast(pa.array(self.perm[ranks]), pa.string())
        return hash64_strings(pc.binary_join_element_wise(pa.scalar(f"{self.name}_"), numbers, ""))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


@dataclass
class Teacher:
    """The planted click model; ``logits(ranks, dense)`` is exact for any rows it generated."""

    sparse: list[SparseTeacher]
    dense_mu: np.ndarray
    dense_sigma: np.ndarray
    dense_missing: np.ndarray
    dense_beta: np.ndarray
    pairs: list[tuple[int, int]]  # interacting field pairs; the first is also the non-linear one
    kappa: float = 1.0
    scales: np.ndarray | None = None
    alpha: float = 1.0
    bias: float = 0.0
    multi: tuple[int, ...] = ()  # multi-valued fields: each row's value plus 0..multi_max_len-1 extra ones
    multi_max_len: int = 1

    def extras(self, rng: np.random.Generator, n: int) -> Extras:
        """Per multi-valued field, each row's number of extra values and their ranks (row order)."""
        out: Extras = {}
        for i in self.multi:
            f = self.sparse[i]
            lengths = rng.integers(0, self.multi_max_len, n)
            out[i] = (lengths, _sample_ranks(rng.random(int(lengths.sum())), f.cardinality, f.exponent))
        return out

    def ranks(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``[F, n]`` popularity ranks of ``n`` rows."""
        return np.stack([_sample_ranks(rng.random(n), f.cardinality, f.exponent) for f in self.sparse])

    def dense(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``[D, n]`` transformed dense values (``log1p`` of counts; missing -> 0)."""
        d = len(self.dense_mu)
        noise = rng.standard_normal((d, n), np.float32)
        logs = self.dense_mu[:, None].astype(np.float32) + self.dense_sigma[:, None].astype(np.float32) * noise
        counts = np.floor(np.exp(np.minimum(logs, np.float32(30.0))))
        present = rng.random((d, n), np.float32) >= self.dense_missing[:, None].astype(np.float32)
        return np.where(present, np.log1p(counts), np.float32(0.0))

    def parts(self, ranks: np.ndarray, dense: np.ndarray, extras: Extras | None = None) -> np.ndarray:
        """``[4, n]`` unscaled parts: first order, pair interactions, dense linear, non-linear; a bag
        (``extras``) contributes the mean of its values' weights and vectors."""
        n = ranks.shape[1]
        extras = extras or {}
        first = np.zeros(n, np.float32)
        for i, f in enumerate(self.sparse):
            w = f.first[f.param_rows(ranks[i])]
            first += _bag_mean(w, f.first[f.param_rows(extras[i][1])], extras[i][0]) if i in extras else w
        vectors = {}
        for i in {i for pair in self.pairs for i in pair}:
            v = self.sparse[i].vectors(ranks[i])
            vectors[i] = _bag_mean(v, self.sparse[i].vectors(extras[i][1]), extras[i][0]) if i in extras else v
        crosses = [_rowdot(vectors[a], vectors[b]) for a, b in self.pairs]
        pairs = np.sum(crosses, axis=0) if crosses else np.zeros(n, np.float32)
        nonlinear = np.tanh(self.kappa * crosses[0]) if crosses else np.zeros(n, np.float32)
        dense_part = self.dense_beta @ dense if len(dense) else np.zeros(n, np.float32)
        return np.stack([first, pairs, dense_part, nonlinear]).astype(np.float64)

    def cross(self, ranks: np.ndarray) -> np.ndarray:
        """``<v_a, v_b>`` of the non-linear pair ``(a, b)``."""
        a, b = self.pairs[0]
        return _rowdot(self.sparse[a].vectors(ranks[a]), self.sparse[b].vectors(ranks[b]))

    def logits(self, ranks: np.ndarray, dense: np.ndarray, extras: Extras | None = None) -> np.ndarray:
        assert self.scales is not None, "teacher is not calibrated"
        return self.bias + self.alpha * (self.scales @ self.parts(ranks, dense, extras))


def _bag_mean(first: np.ndarray, extra: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row, the mean of its value's ``first`` row and its ``lengths`` extra rows (row order)."""
    total = first.astype(np.float32, copy=True)
    np.add.at(total, np.repeat(np.arange(len(lengths)), lengths), extra)
    scale = (1.0 + lengths).astype(np.float32)
    return total / (scale[:, None] if total.ndim == 2 else scale)


def _sparse_teacher(rng: np.random.Generator, name: str, n: int, profile: SynthProfile, interacts: bool) -> SparseTeacher:
    """Popularity law, value numbering and per-value parameters of one field."""
    exponent = profile.zipf_exponent + profile.zipf_jitter * rng.uniform(-1, 1)
    importance = rng.uniform(0.2, 1.0)
    perm = rng.permutation(n).astype(np.int64)
    amplitude = np.minimum(1.0, _rank_probs(n, exponent) / profile.signal_ref_prob) ** profile.signal_tail_power
    head = int(np.count_nonzero(amplitude >= profile.signal_min_amplitude))
    amp = amplitude[:head].astype(np.float32)
    k = profile.latent_dim
    first = np.zeros(head + 1, np.float32)
    first[:head] = importance * amp * rng.standard_normal(head, np.float32)
    latent = np.zeros((head + 1 if interacts else 1, k), np.float32)
    if interacts:
        latent[:head] = math.sqrt(importance / k) * amp[:, None] * rng.standard_normal((head, k), np.float32)
    return SparseTeacher(name, n, exponent, perm, first, latent)


def _choose_pairs(rng: np.random.Generator, cards: Sequence[int], profile: SynthProfile) -> list[tuple[int, int]]:
    """``interaction_pairs`` distinct field pairs, among fields of at most ``interaction_max_cardinality``."""
    limit = profile.interaction_max_cardinality
    fields = [i for i, n in enumerate(cards) if limit is None or n <= limit]
    candidates = list(itertools.combinations(fields, 2))
    chosen = rng.choice(len(candidates), min(profile.interaction_pairs, len(candidates)), replace=False)
    return [candidates[int(c)] for c in chosen]


def build_teacher(profile: SynthProfile, seed: int, scale: float = 1.0) -> Teacher:
    """The teacher of ``(profile, seed, scale)``, calibrated on a pilot sample."""
    rng = np.random.default_rng([seed, STREAM_TEACHER])
    cards = profile.scaled_cardinalities(scale)
    pairs = _choose_pairs(rng, cards, profile)
    interacting = {i for pair in pairs for i in pair}
    sparse = [_sparse_teacher(rng, f"C{i + 1}", n, profile, i in interacting) for i, n in enumerate(cards)]
    d = profile.num_dense
    teacher = Teacher(
        sparse=sparse,
        dense_mu=rng.uniform(0.0, 4.0, d),
        dense_sigma=rng.uniform(0.5, 1.5, d),
        dense_missing=rng.uniform(0.0, profile.dense_missing_max, d),
        dense_beta=rng.standard_normal(d).astype(np.float32),
        pairs=pairs,
        multi=tuple(profile.multi_valued),
        multi_max_len=profile.multi_max_len,
    )
    bad = [i for i in profile.multi_valued if not 0 <= i < len(cards)]
    if bad:
        raise ValueError(f"profile multi_valued: fields {bad} out of range 0..{len(cards) - 1}")
    _calibrate(teacher, profile, seed)
    return teacher


def _calibrate(teacher: Teacher, profile: SynthProfile, seed: int) -> None:
    """Part scales, ``alpha`` and ``bias`` from a pilot sample (see the module docstring)."""
    rng = np.random.default_rng([seed, STREAM_PILOT])
    ranks, dense = teacher.ranks(rng, PILOT_ROWS), teacher.dense(rng, PILOT_ROWS)
    if teacher.pairs:
        teacher.kappa = KAPPA_STDS / max(float(np.std(teacher.cross(ranks))), 1e-12)
    extras = teacher.extras(np.random.default_rng([seed, STREAM_PILOT, STREAM_BAGS]), PILOT_ROWS) if teacher.multi else None
    parts = teacher.parts(ranks, dense, extras)
    var = parts.var(axis=1)
    shares = np.asarray(profile.shares, np.float64)
    teacher.scales = np.where(var > 0, np.sqrt(shares / np.maximum(var, 1e-300)), 0.0)
    z = teacher.scales @ parts
    teacher.alpha, teacher.bias = _fit_alpha_bias(z, profile.target_ctr, profile.target_auc)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _bias_for(z: np.ndarray, alpha: float, ctr: float) -> float:
    """Bias making the mean of ``sigmoid(bias + alpha z)`` equal ``ctr`` (Newton inside a bracket)."""
    lo, hi = -40.0, 40.0
    b = math.log(ctr / (1 - ctr)) - alpha * float(z.mean())
    for _ in range(100):
        p = sigmoid(b + alpha * z)
        gap = float(p.mean()) - ctr
        if abs(gap) < 1e-12:
            break
        lo, hi = (b, hi) if gap < 0 else (lo, b)
        step = b - gap / max(float(np.mean(p * (1 - p))), 1e-300)
        b = step if lo < step < hi else 0.5 * (lo + hi)
    return b


def _expected_auc(z_sorted: np.ndarray, starts: np.ndarray, p: np.ndarray) -> float:
    """AUC expected when labels are drawn from ``p`` (rows sorted by score; ties count half)."""
    pos, neg = np.add.reduceat(p, starts), np.add.reduceat(1 - p, starts)
    self_pairs = float(np.dot(p, 1 - p))
    below = np.cumsum(neg) - neg
    numerator = float(np.dot(pos, below) + 0.5 * (np.dot(pos, neg) - self_pairs))
    return numerator / (p.sum() * (1 - p).sum() - self_pairs)


def _fit_alpha_bias(z: np.ndarray, ctr: float, target_auc: float) -> tuple[float, float]:
    """``alpha`` (bisection on the expected AUC, which grows with it) and its ``bias``."""
    z = np.sort(z)
    starts = np.flatnonzero(np.r_[True, z[1:] != z[:-1]])
    lo, hi = 0.0, 20.0
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        p = sigmoid(_bias_for(z, mid, ctr) + mid * z)
        lo, hi = (mid, hi) if _expected_auc(z, starts, p) < target_auc else (lo, mid)
    alpha = 0.5 * (lo + hi)
    return alpha, _bias_for(z, alpha, ctr)
