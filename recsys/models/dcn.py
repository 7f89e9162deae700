"""DCNv2 (Wang et al., 2021) as TorchRec's ``DLRM_DCN``: DLRM with a low-rank cross net interaction.

The dense vector and the F fields are concatenated into ``[B, (F+1)·D]`` and passed through
``dcn_num_layers`` low-rank cross layers ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` with
``W_l = U_l V_l`` of rank ``dcn_low_rank_dim``, then the over arch (stacked structure).

Example:
    >>> model = DCNv2(method, 13, 16, [64, 32], [128, 64], dcn_num_layers=3, dcn_low_rank_dim=16)  # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from recsys.config import ModelConfig
from recsys.models.blocks import dcn_interaction
from recsys.models.dlrm import DLRM


class DCNv2(DLRM):
    """DLRM whose interaction is TorchRec's ``InteractionDCNArch`` over a ``LowRankCrossNet``.

    The cross layers weigh each field's columns separately, so rows shared between features
    need no per-field projection here (``weighs_each_field``).

    Args:
        embedding: the embedding method.
        num_dense: number of dense features (0 allowed).
        embedding_dim: field width ``D``.
        dense_arch: bottom MLP hidden sizes (``D`` is appended).
        over_arch: top MLP hidden sizes (a 1-unit logit layer is appended).
        dcn_num_layers: cross layers.
        dcn_low_rank_dim: rank of each cross layer's weight.
        field_projection: a learned ``Linear(d_f, D)`` per field before the interaction.
    """

    weighs_each_field = True

    def __init__(
        self,
        embedding: nn.Module,
        num_dense: int,
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
        dcn_num_layers: int,
        dcn_low_rank_dim: int,
        field_projection: bool = False,
    ) -> None:
        interaction = dcn_interaction(dcn_num_layers, dcn_low_rank_dim)
        super().__init__(embedding, num_dense, embedding_dim, dense_arch, over_arch, interaction, field_projection)

    @classmethod
    def from_config(cls, cfg: ModelConfig, embedding: nn.Module, num_dense: int) -> "DCNv2":
        """Build from a ``ModelConfig``."""
        layers, rank = cfg.dcn_num_layers, cfg.dcn_low_rank_dim
        return cls(embedding, num_dense, cfg.embedding_dim, cfg.dense_arch, cfg.over_arch, layers, rank, cfg.field_projection)
