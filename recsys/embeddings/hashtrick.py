"""``hash``: the hashing trick, each feature's raw ids hashed into its own smaller table.

Feature ``f`` has a table of ``rows_f`` rows and id ``x`` reads row
``bucket(x, salt_for(f), rows_f)`` (``recsys.hashing``, the project's one hash), so serving
reproduces the placement from the feature name alone. Table sizes, in order of precedence:

* ``rows``: an int for every feature, or a dict naming every feature;
* the context's budget: ``rows_f`` proportional to ``cardinality_f``, clipped to
  ``[1, cardinality_f]``, with ``Σ rows_f × D × 4 ≤ budget`` exactly (``proportional_rows``);
* neither: ``rows_f = cardinality_f``.

Example:
    >>> method = build_method("hash", ctx.with_budget(compression=10))  # doctest: +SKIP
    >>> method.rows                                                      # doctest: +SKIP
    {'C1': 140, 'C2': 55, ...}
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import BYTES_PER_WEIGHT, EmbeddingMethod, IdScheme, MethodContext, MethodOptions, ebc_bytes, table_bytes
from recsys.embeddings.full import empty_output, in_order
from recsys.embeddings.registry import register_method
from recsys.embeddings.rekey import Expanded
from recsys.hashing import bucket_per_value, salt_for

MAX_ROWS = 2**31 - 1


class HashOptions(MethodOptions):
    """Options of ``hash``."""

    rows: int | dict[str, int] | None = Field(None, description="table rows: one size for every feature or one per feature; else from the budget")


def proportional_rows(cardinalities: list[int], total_rows: int) -> list[int]:
    """Rows per table ∝ cardinality, each in ``[1, cardinality]``, summing to ``min(total_rows, Σ cardinality)``.

    Finds the largest scale ``s`` with ``Σ clip(floor(s·c), 1, c) ≤ total_rows`` by bisection,
    then hands the few rows left over one each to the tables furthest below their share.
    """
    caps = [max(int(c), 1) for c in cardinalities]
    if total_rows < len(caps):
        raise ValueError(f"{total_rows} rows cannot give each of {len(caps)} tables one row")
    if total_rows >= sum(caps):
        return caps

    def alloc(scale: float) -> list[int]:
        return [min(c, max(1, math.floor(scale * c))) for c in caps]

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if sum(alloc(mid)) <= total_rows else (lo, mid)
    rows = alloc(lo)
    left = total_rows - sum(rows)
    order = sorted(range(len(caps)), key=lambda i: (hi * caps[i] - rows[i], caps[i]), reverse=True)
    while left > 0:
        for i in order:
            if left > 0 and rows[i] < caps[i]:
                rows[i] += 1
                left -= 1
    return rows


def _explicit_rows(ctx: MethodContext, rows: int | dict[str, int]) -> list[int]:
    names = ctx.feature_names
    if isinstance(rows, int):
        sizes = [rows] * len(names)
    else:
        unknown = sorted(set(rows) - set(names))
        missing = [n for n in names if n not in rows]
        if unknown or missing:
            raise ValueError(f"hash: 'rows' must name every feature; unknown {unknown}, missing {missing}")
        sizes = [rows[n] for n in names]
    bad = [s for s in sizes if not 0 < s <= MAX_ROWS]
    if bad:
        raise ValueError(f"hash: rows must be in [1, {MAX_ROWS}], got {bad}")
    return sizes


@register_method
class HashEmbedding(EmbeddingMethod):
    """Hashing trick: one hashed table per feature; ``ebc`` tables are named after the features."""

    name: ClassVar[str] = "hash"
    Options: ClassVar[type[MethodOptions]] = HashOptions
    ids: ClassVar[IdScheme] = "raw"

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        assert isinstance(options, HashOptions)
        cards = [max(f.cardinality, 1) for f in ctx.features]
        if options.rows is not None:
            sizes = _explicit_rows(ctx, options.rows)
        elif ctx.budget_bytes is not None:
            total = ctx.budget_bytes // (ctx.embedding_dim * BYTES_PER_WEIGHT)
            if total < len(cards):
                raise ValueError(
                    f"method 'hash' cannot fit the budget of {ctx.budget_bytes} bytes: one row per feature "
                    f"needs {table_bytes(len(cards), ctx.embedding_dim)} bytes"
                )
            sizes = proportional_rows(cards, total)
        else:
            sizes = cards
        if max(sizes) > MAX_ROWS:
            raise ValueError(f"hash: tables over {MAX_ROWS} rows are not supported, got {max(sizes)}")
        self.rows: dict[str, int] = dict(zip(ctx.feature_names, sizes))
        self._position = {n: i for i, n in enumerate(ctx.feature_names)}
        salts = torch.tensor([salt_for(n) for n in ctx.feature_names], dtype=torch.int64)
        self.register_buffer("_salts", salts, persistent=False)
        self.register_buffer("_num_rows", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        tables = [
            EmbeddingBagConfig(
                name=f.name,
                num_embeddings=self.rows[f.name],
                embedding_dim=ctx.embedding_dim,
                feature_names=[f.name],
                pooling=f.pooling,
            )
            for f in ctx.features
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=ctx.any_weighted)

    def _per_key(self, table: torch.Tensor, keys: list[str]) -> torch.Tensor:
        if keys == self.ctx.feature_names:
            return table
        return table[torch.tensor([self._position[k] for k in keys], device=table.device)]

    def hashed(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The KJT with every raw id replaced by its row: one ``bucket_per_value`` over all values."""
        keys, ex = features.keys(), Expanded(features)
        salts, rows = ex.per_value(self._per_key(self._salts, keys)), ex.per_value(self._per_key(self._num_rows, keys))
        return ex.rebuilt(keys, bucket_per_value(ex.values, salts, rows))

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled hashed rows of each feature, keyed by feature name in context order."""
        if features.stride() == 0:
            return empty_output(self, features.values())
        return in_order(self.ebc(self.hashed(features)), self.ctx.feature_names)

    def memory_bytes(self) -> int:
        return ebc_bytes(self.ebc)
