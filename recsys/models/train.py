"""The train wrapper: a CTR model plus its loss, ``forward(batch) -> (loss, logits)``.

Example:
    >>> train_model = TrainModel(build_model(cfg.model, method, num_dense))  # doctest: +SKIP
    >>> loss, logits = train_model(batch)                                    # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recsys.data.batch import Batch
from recsys.embeddings.base import EmbeddingMethod


class TrainModel(nn.Module):
    """Mean binary cross-entropy on the logits, plus the method's ``aux_loss()`` when it has one.

    Args:
        model: a ``CTRModel`` (``forward(dense, sparse) -> [B]`` logits, attribute ``embedding``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def embedding(self) -> nn.Module:
        """The embedding method of the wrapped model."""
        return self.model.embedding

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: batch: one ``Batch``. Returns ``(loss, logits [B])``."""
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.to(logits.dtype))
        embedding = self.model.embedding
        aux = embedding.aux_loss() if isinstance(embedding, EmbeddingMethod) else None  # a stock EBC adds none
        if aux is not None:
            loss = loss + aux
        return loss, logits
