"""``qr``: quotient-remainder compositional embeddings (Shi et al., KDD 2020).

Feature ``f`` with divisor ``m_f`` has a quotient table ``f@q`` of ``ceil(card_f / m_f)``
rows, read at ``id // m_f``, and a remainder table ``f@r`` of ``m_f`` rows, read at
``id % m_f``; every index gets a distinct (quotient, remainder) pair. The two pooled vectors
are combined by ``combiner``: ``mult`` (elementwise product, default), ``sum``, or ``concat``
(each table ``D/2`` wide). As in the authors' DLRM ``QREmbeddingBag``, the combination is
applied to the pooled bags, so it equals the per-id QR embedding for single-valued features
(for multi-valued ones, ``mult`` gives ``pool(q) ⊙ pool(r)``). Per-value weights scale both
tables, except under ``mult`` where only the quotient side is weighted (so ``w·(q ⊙ r)``).
A feature stays one full table (``f``) whenever its QR tables would not be smaller.

Divisors (``m_f`` is the "number of collisions": indices sharing a quotient row):

* ``collisions``: ``m_f = collisions`` for every feature;
* the context's budget (``qr_divisors``): one shared ``m``, the smallest that fits, capped
  per feature at the size-minimising divisor ``≈ sqrt(card_f)``; then, largest features
  first, each ``m_f`` is lowered as far as the leftover budget allows. This keeps sharing
  uniform across features (as ``hash`` keeps rows ∝ cardinality) and lands close under the
  budget (within 0.01% on Criteo-like cardinalities at 10× and 100×). A budget below the
  sum of every feature's smallest size raises (QR reaches at most ≈ card / (2·sqrt(card)));
* neither: ``collisions = 4`` (the DLRM reference setting).

Tables use TorchRec's default init, uniform in ±sqrt(1/rows), deterministic under
``torch.manual_seed``; a ``mult`` product is then of the order of sqrt(1/card).

Example:
    >>> method = build_method("qr", ctx.with_budget(compression=10))  # doctest: +SKIP
    >>> method.divisors                                                # doctest: +SKIP
    {'C1': 0, 'C2': 11, ...}                                           # 0: a full table
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import EmbeddingMethod, IdScheme, MethodContext, MethodOptions, ebc_bytes, table_bytes
from recsys.embeddings.full import empty_output
from recsys.embeddings.registry import register_method
from recsys.embeddings.rekey import Expanded

DEFAULT_COLLISIONS = 4
Combiner = Literal["mult", "sum", "concat"]


class QROptions(MethodOptions):
    """Options of ``qr``."""

    combiner: Combiner = Field("mult", description="how the quotient and remainder vectors combine")
    collisions: int | None = Field(None, ge=2, description="divisor m for every feature; else from the budget")


def _widths(dim: int, combiner: Combiner) -> tuple[int, int]:
    """(quotient, remainder) table widths."""
    return (dim - dim // 2, dim // 2) if combiner == "concat" else (dim, dim)


def qr_bytes(card: int, m: int, dim: int, widths: tuple[int, int]) -> int:
    """Bytes of a feature at divisor ``m``: its QR tables, or its full table (``m < 2`` or not larger)."""
    full = table_bytes(card, dim)
    if m < 2:
        return full
    return min(full, table_bytes(math.ceil(card / m), widths[0]) + table_bytes(m, widths[1]))


def qr_divisors(cards: list[int], dim: int, combiner: Combiner, budget: int) -> list[int]:
    """Divisor per feature (1 = full table) fitting ``budget`` bytes; see the module docstring."""
    widths = _widths(dim, combiner)
    best = [min(range(1, math.isqrt(2 * c) + 2), key=lambda m: (qr_bytes(c, m, dim, widths), m)) for c in cards]
    floor = sum(qr_bytes(c, m, dim, widths) for c, m in zip(cards, best))
    if floor > budget:
        raise ValueError(f"method 'qr' cannot fit the budget of {budget} bytes: its smallest tables (m_f ≈ sqrt(card_f)) need {floor} bytes")
    divisors = best
    for shared in range(1, max(best) + 1):
        candidate = [min(shared, b) for b in best]
        if sum(qr_bytes(c, m, dim, widths) for c, m in zip(cards, candidate)) <= budget:
            divisors = candidate
            break
    total = sum(qr_bytes(c, m, dim, widths) for c, m in zip(cards, divisors))
    for i in sorted(range(len(cards)), key=lambda i: -cards[i]):
        base = total - qr_bytes(cards[i], divisors[i], dim, widths)
        for m in range(1, divisors[i]):
            if base + qr_bytes(cards[i], m, dim, widths) <= budget:
                divisors[i] = m
                break
        total = base + qr_bytes(cards[i], divisors[i], dim, widths)
    return divisors


@dataclass(frozen=True)
class _Plan:
    """How one KJT key order maps onto the QR tables."""

    permute: list[int]
    permute_tensor: torch.Tensor
    keys: list[str]
    divisors: torch.Tensor  # per new key: m (1 for a full table)
    is_remainder: torch.Tensor  # per new key


@register_method
class QREmbedding(EmbeddingMethod):
    """Quotient-remainder tables ``f@q``/``f@r`` (or a full ``f``) in one ``ebc``."""

    name: ClassVar[str] = "qr"
    Options: ClassVar[type[MethodOptions]] = QROptions
    ids: ClassVar[IdScheme] = "index"

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        assert isinstance(options, QROptions)
        dim, combiner = ctx.embedding_dim, options.combiner
        if combiner == "concat" and dim < 2:
            raise ValueError(f"qr: combiner 'concat' needs embedding_dim >= 2, got {dim}")
        widths = _widths(dim, combiner)
        cards = [max(f.cardinality, 1) for f in ctx.features]
        if options.collisions is not None or ctx.budget_bytes is None:
            chosen = [options.collisions or DEFAULT_COLLISIONS] * len(cards)
        else:
            chosen = qr_divisors(cards, dim, combiner, ctx.budget_bytes)
        self.divisors: dict[str, int] = {
            f.name: (m if qr_bytes(c, m, dim, widths) < qr_bytes(c, 1, dim, widths) else 0) for f, c, m in zip(ctx.features, cards, chosen)
        }
        self.combiner = combiner
        tables: list[EmbeddingBagConfig] = []
        for f, card in zip(ctx.features, cards):
            m = self.divisors[f.name]
            parts = [(f.name, card, dim)]
            if m:
                parts = [(f"{f.name}@q", math.ceil(card / m), widths[0]), (f"{f.name}@r", m, widths[1])]
            tables += [EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[n], pooling=f.pooling) for n, r, d in parts]
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=ctx.any_weighted)
        self._table_names = [t.name for t in tables]
        self._any_qr = any(self.divisors.values())
        self._plans: dict[tuple[tuple[str, ...], torch.device], _Plan] = {}
        self._gathers: dict[tuple[tuple[str, ...], torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _plan(self, keys: list[str], device: torch.device) -> _Plan:
        cached = self._plans.get((tuple(keys), device))
        if cached is not None:
            return cached
        permute: list[int] = []
        new_keys: list[str] = []
        divisors: list[int] = []
        is_remainder: list[bool] = []
        for i, k in enumerate(keys):
            m = self.divisors[k]
            parts = [(f"{k}@q", m, False), (f"{k}@r", m, True)] if m else [(k, 1, False)]
            for name, d, r in parts:
                permute.append(i)
                new_keys.append(name)
                divisors.append(d)
                is_remainder.append(r)
        plan = _Plan(
            permute=permute,
            permute_tensor=torch.tensor(permute, dtype=torch.int32, device=device),
            keys=new_keys,
            divisors=torch.tensor(divisors, dtype=torch.int64, device=device),
            is_remainder=torch.tensor(is_remainder, dtype=torch.bool, device=device),
        )
        self._plans[(tuple(keys), device)] = plan
        return plan

    def split_ids(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The KJT of table rows: each QR feature's bags twice, as ``f@q`` (id // m) and ``f@r`` (id % m)."""
        plan = self._plan(features.keys(), features.values().device)
        ex = Expanded(features, plan.permute, plan.permute_tensor)
        divisor, is_remainder, ids = ex.per_value(plan.divisors), ex.per_value(plan.is_remainder), ex.values
        quotient = torch.div(ids, divisor, rounding_mode="floor")
        weights = ex.source.weights_or_none()
        if weights is not None and self.combiner == "mult":
            weights = torch.where(is_remainder, torch.ones_like(weights), weights)
        return ex.rebuilt(plan.keys, torch.where(is_remainder, ids - quotient * divisor, quotient), weights)

    def _gather(self, keys: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per feature in context order, the slots of its first and its remainder table among
        pooled outputs ordered as ``keys``; slot ``len(keys)`` is the padding (full tables)."""
        cached = self._gathers.get((tuple(keys), device))
        if cached is None:
            slot = {k: i for i, k in enumerate(keys)}
            names = self.ctx.feature_names
            first = [slot[f"{n}@q"] if self.divisors[n] else slot[n] for n in names]
            second = [slot[f"{n}@r"] if self.divisors[n] else len(keys) for n in names]
            cached = (torch.tensor(first, device=device), torch.tensor(second, device=device))
            self._gathers[(tuple(keys), device)] = cached
        return cached

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Combined quotient/remainder vectors, keyed by feature name in context order."""
        if features.stride() == 0:
            return empty_output(self, features.values())
        pooled = self.ebc(self.split_ids(features) if self._any_qr else features)
        keys, values = pooled.keys(), pooled.values()
        names = self.ctx.feature_names
        dim = self.ctx.embedding_dim
        if self.combiner == "concat":
            if keys != self._table_names:
                parts = pooled.to_dict()
                values = torch.cat([parts[t] for t in self._table_names], dim=1)
        else:
            first, second = self._gather(keys, values.device)
            batch = values.shape[0]
            padding = 1.0 if self.combiner == "mult" else 0.0
            tables = F.pad(values.view(batch, len(keys), dim), (0, 0, 0, 1), value=padding)
            a, b = tables.index_select(1, first), tables.index_select(1, second)
            values = (a * b if self.combiner == "mult" else a + b).reshape(batch, len(names) * dim)
        return KeyedTensor(keys=names, length_per_key=[dim] * len(names), values=values)

    def memory_bytes(self) -> int:
        return ebc_bytes(self.ebc)
