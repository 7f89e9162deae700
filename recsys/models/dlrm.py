"""DLRM (Naumov et al., 2019) over any embedding method.

Bottom MLP ``dense_arch + [D]`` (a learned constant vector when there are no dense
features), pairwise dot interaction of the dense vector and the F sparse fields, and a top
MLP ``over_arch + [1]``. TorchRec's ``DenseArch`` and ``InteractionArch`` are reused; the
sparse arch accepts methods with per-feature widths (see ``blocks.SparseArch``).

Example:
    >>> model = DLRM(method, num_dense=13, embedding_dim=16, dense_arch=[64, 32], over_arch=[128, 64])  # doctest: +SKIP
    >>> logits = model(batch.dense_features, batch.sparse_features)  # [B]          # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import ModelConfig
from recsys.models.blocks import CTRModel, InteractionBuilder, LogitHead, dot_interaction, make_dense_arch


class DLRM(CTRModel):
    """Dense arch, an interaction over ``[dense, fields]``, and an over arch to one logit.

    Args:
        embedding: the embedding method (``forward(KJT) -> KeyedTensor``).
        num_dense: number of dense features (0 allowed).
        embedding_dim: field width ``D``.
        dense_arch: bottom MLP hidden sizes (``D`` is appended).
        over_arch: top MLP hidden sizes (a 1-unit logit layer is appended).
        interaction: builds ``(module, output width)`` from ``(F, D)``; DLRM's dot interaction by default.
        field_projection: a learned ``Linear(d_f, D)`` per field before the interaction.
    """

    def __init__(
        self,
        embedding: nn.Module,
        num_dense: int,
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
        interaction: InteractionBuilder = dot_interaction,
        field_projection: bool = False,
    ) -> None:
        super().__init__(embedding, embedding_dim, field_projection)
        self.dense_arch = make_dense_arch(num_dense, dense_arch, embedding_dim)
        self.inter_arch, width = interaction(self.num_sparse, embedding_dim)
        self.over_arch = LogitHead(width, over_arch)

    @classmethod
    def from_config(cls, cfg: ModelConfig, embedding: nn.Module, num_dense: int) -> "DLRM":
        """Build from a ``ModelConfig``."""
        return cls(embedding, num_dense, cfg.embedding_dim, cfg.dense_arch, cfg.over_arch, field_projection=cfg.field_projection)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """Args: dense_features: ``[B, num_dense]``; sparse_features: KJT. Returns logits ``[B]``."""
        fields = self.embed(sparse_features)
        dense = self.dense_arch(dense_features)
        return self.over_arch(self.inter_arch(dense, fields)).squeeze(-1)
