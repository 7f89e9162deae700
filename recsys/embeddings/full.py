"""``full``: the collisionless baseline, one ``cardinality × D`` table per feature.

Ids are vocabulary indices (``id_scheme='index'``) and go to the tables unchanged, so the
forward is exactly one stock ``EmbeddingBagCollection`` call. ``full`` cannot compress: with
a budget smaller than its size it raises.

Example:
    >>> method = build_method("full", ctx)                 # doctest: +SKIP
    >>> method(batch.sparse_features).values().shape       # doctest: +SKIP
    torch.Size([B, F * D])
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import EmbeddingMethod, IdScheme, MethodContext, MethodOptions, ebc_bytes, keyed_tensor, table_bytes
from recsys.embeddings.registry import register_method


def in_order(pooled: KeyedTensor, names: list[str]) -> KeyedTensor:
    """``pooled`` with its keys in ``names`` order; a sharded EBC orders its output its own way."""
    if pooled.keys() == names:
        return pooled
    parts = pooled.to_dict()
    return keyed_tensor(names, [parts[n] for n in names])


def empty_output(method: EmbeddingMethod, like: torch.Tensor) -> KeyedTensor:
    """The output for a batch of zero rows, which a stock EBC cannot look up."""
    dims = [method.output_dims()[n] for n in method.ctx.feature_names]
    values = torch.zeros(0, sum(dims), device=like.device)
    return KeyedTensor(keys=method.ctx.feature_names, length_per_key=dims, values=values)


class FullOptions(MethodOptions):
    """``full`` has no options beyond the context's budget."""


@register_method
class FullEmbedding(EmbeddingMethod):
    """One collisionless table per feature; ``ebc`` tables are named after the features."""

    name: ClassVar[str] = "full"
    Options: ClassVar[type[MethodOptions]] = FullOptions
    ids: ClassVar[IdScheme] = "index"

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        needed = sum(table_bytes(max(f.cardinality, 1), ctx.embedding_dim) for f in ctx.features)
        if ctx.budget_bytes is not None and needed > ctx.budget_bytes:
            raise ValueError(
                f"method 'full' needs {needed} bytes (collisionless tables), over the budget of "
                f"{ctx.budget_bytes} bytes; full cannot compress, pick a compressing method"
            )
        tables = [
            EmbeddingBagConfig(
                name=f.name,
                num_embeddings=max(f.cardinality, 1),
                embedding_dim=ctx.embedding_dim,
                feature_names=[f.name],
                pooling=f.pooling,
            )
            for f in ctx.features
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=ctx.any_weighted)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled rows of each feature's table; the KJT is passed through untouched."""
        if features.stride() == 0:
            return empty_output(self, features.values())
        return in_order(self.ebc(features), self.ctx.feature_names)

    def memory_bytes(self) -> int:
        return ebc_bytes(self.ebc)
