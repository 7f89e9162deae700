"""DeepFM (Guo et al., 2017) over any embedding method: first-order + FM + deep, summed.

With fields ``e_1..e_F`` (``[B, F, D]``, shared by all three parts as in the paper) and dense
features ``x`` (``[B, n]``), the logit is

* first order: ``w·[e_1, ..., e_F, x] + b`` — the paper's per-id scalar ``w_i`` would need
  an extra uncompressed table, so each field's first-order weight is a learned 1-dim
  projection of its (compressed) embedding, plus a linear term of the dense features;
* FM second order: ``Σ_{i<j} <v_i, v_j>`` over the F sparse fields plus, when ``n > 0``, one
  dense field ``v_{F+1} = W x`` (the dense features projected to ``D``);
* deep: an MLP ``deep_layers + [1]`` over the same concatenation ``[e_1, ..., e_F, x]``.

Example:
    >>> model = DeepFM(method, num_dense=13, embedding_dim=16, deep_layers=[256, 128])  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import ModelConfig
from recsys.models.blocks import CTRModel, FMInteraction, LogitHead


class DeepFM(CTRModel):
    """First-order linear + FM interaction + deep MLP, sharing the embedding fields.

    Args:
        embedding: the embedding method.
        num_dense: number of dense features (0: no dense field, no dense linear term).
        embedding_dim: field width ``D``.
        deep_layers: hidden sizes of the deep component (a 1-unit logit layer is appended).
        field_projection: a learned ``Linear(d_f, D)`` per field before the FM and deep parts.
    """

    def __init__(self, embedding: nn.Module, num_dense: int, embedding_dim: int, deep_layers: list[int], field_projection: bool = False) -> None:
        super().__init__(embedding, embedding_dim, field_projection)
        flat = self.num_sparse * embedding_dim + num_dense
        self.first_order = nn.Linear(flat, 1)
        self.dense_field = nn.Linear(num_dense, embedding_dim, bias=False) if num_dense > 0 else None
        self.fm = FMInteraction()
        self.deep = LogitHead(flat, deep_layers)

    @classmethod
    def from_config(cls, cfg: ModelConfig, embedding: nn.Module, num_dense: int) -> "DeepFM":
        """Build from a ``ModelConfig`` (uses ``deep_layers``; ``dense_arch``/``over_arch`` are not used)."""
        return cls(embedding, num_dense, cfg.embedding_dim, cfg.deep_layers, cfg.field_projection)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """Args: dense_features: ``[B, num_dense]``; sparse_features: KJT. Returns logits ``[B]``."""
        fields = self.embed(sparse_features)
        flat = torch.cat([fields.flatten(1), dense_features], dim=1)
        if self.dense_field is not None:
            fields = torch.cat([fields, self.dense_field(dense_features).unsqueeze(1)], dim=1)
        return (self.first_order(flat) + self.fm(fields) + self.deep(flat)).squeeze(-1)
