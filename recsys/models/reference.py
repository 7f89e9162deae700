"""A plain-PyTorch DLRM (``nn.EmbeddingBag`` per feature, no TorchRec) for throughput baselines.

Same architecture as ``recsys.models.DLRM`` with a collisionless table per feature: bottom
MLP ``dense_arch + [D]`` (a learned constant when there are no dense features), pairwise
dot interaction, top MLP ``over_arch + [1]``. It reads the same ``KeyedJaggedTensor``
batches, so a benchmark compares lookups and fused kernels, not input handling.

Example:
    >>> model = ReferenceDLRM(method.embedding_bag_configs(), 13, 16, [64, 32], [128, 64])  # doctest: +SKIP
    >>> logits = model(batch.dense_features, batch.sparse_features)                        # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def _mlp(in_features: int, sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(in_features, size))
        if last_relu or i < len(sizes) - 1:
            layers.append(nn.ReLU())
        in_features = size
    return nn.Sequential(*layers)


class ReferenceDLRM(nn.Module):
    """DLRM with one ``nn.EmbeddingBag`` per feature.

    Args:
        tables: one config per table (``num_embeddings``, ``embedding_dim == D``, ``pooling``;
            weighted features need SUM pooling, as in ``nn.EmbeddingBag``);
            a table with several ``feature_names`` gets one bag per feature.
        num_dense: number of dense features (0 allowed).
        embedding_dim: ``D``.
        dense_arch: bottom MLP hidden sizes (``D`` is appended).
        over_arch: top MLP hidden sizes (a 1-unit logit layer is appended).
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        num_dense: int,
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
    ) -> None:
        super().__init__()
        if any(t.embedding_dim != embedding_dim for t in tables):
            raise ValueError(f"every table must be {embedding_dim} wide")
        self.feature_names = [name for t in tables for name in t.feature_names]
        modes = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}
        self.bags = nn.ModuleList(nn.EmbeddingBag(t.num_embeddings, embedding_dim, mode=modes[t.pooling]) for t in tables for _ in t.feature_names)
        for bag in self.bags:
            nn.init.uniform_(bag.weight, -1 / math.sqrt(bag.num_embeddings), 1 / math.sqrt(bag.num_embeddings))
        self.bottom = _mlp(num_dense, [*dense_arch, embedding_dim], last_relu=True) if num_dense else None
        self.constant = None if num_dense else nn.Parameter(torch.randn(embedding_dim) / math.sqrt(embedding_dim))
        num = len(self.feature_names) + 1
        self.register_buffer("triu", torch.triu_indices(num, num, offset=1), persistent=False)
        self.top = _mlp(embedding_dim + num * (num - 1) // 2, [*over_arch, 1], last_relu=False)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """Args: dense_features: ``[B, num_dense]``; sparse_features: KJT with these features. Returns ``[B]``."""
        batch = dense_features.shape[0]
        jagged = sparse_features.to_dict()
        pooled = []
        for name, bag in zip(self.feature_names, self.bags):
            jt = jagged[name]
            pooled.append(bag(jt.values(), jt.offsets()[:-1], per_sample_weights=jt.weights_or_none()))
        if self.bottom is not None:
            dense = self.bottom(dense_features)
        else:
            dense = self.constant.unsqueeze(0).expand(batch, -1)
        combined = torch.stack([dense, *pooled], dim=1)
        dots = torch.bmm(combined, combined.transpose(1, 2))[:, self.triu[0], self.triu[1]]
        return self.top(torch.cat([dense, dots], dim=1)).squeeze(-1)
