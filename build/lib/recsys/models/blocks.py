"""Small parts shared by the CTR models: sparse arch, projection, dense input, interactions, heads.

Every model takes an embedding method duck-typed like an ``EmbeddingBagCollection``: it is
called with a ``KeyedJaggedTensor`` and returns a ``KeyedTensor`` (or, once TorchRec has
sharded the tables inside it, a ``LazyAwaitable`` of one), and ``embedding_bag_configs()``
names the features and their output widths. ``SparseArch`` turns that output into the
``[B, F, D]`` field tensor the interactions need, projecting only the features whose width
is not ``D``.

Example:
    >>> sparse_arch = SparseArch({"a": 8, "b": 4}, embedding_dim=8)  # "b" gets a 4->8 Linear
    >>> sparse_arch.projection is not None
    True
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, InteractionDCNArch, choose
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

if TYPE_CHECKING:
    from recsys.config import ModelConfig

InteractionBuilder = Callable[[int, int], tuple[nn.Module, int]]


def feature_dims(embedding: nn.Module) -> dict[str, int]:
    """Output width of every feature of an EBC-like module, in its config order.

    Args:
        embedding: anything with ``embedding_bag_configs()`` (a method or a stock EBC).
    """
    return {name: int(cfg.embedding_dim) for cfg in embedding.embedding_bag_configs() for name in cfg.feature_names}


class ProjectionArch(nn.Module):
    """Per-feature ``Linear(d_f, D)`` (no bias) for the features whose width ``d_f`` is not ``D``.

    Features already ``D`` wide pass through unchanged unless ``project_all``. When every
    feature is projected from one width (``uniform``) the maps are one ``[F, D, d]`` parameter
    ``weight`` applied by one batched matmul (one tensor for the optimizer and DDP, no
    per-field stacking); otherwise each projected feature has its own ``nn.Linear``.

    Args:
        in_dims: width of each feature, in field order.
        out_dim: the common width ``D``.
        project_all: give every feature its own map, also those ``D`` wide.
    """

    def __init__(self, in_dims: dict[str, int], out_dim: int, project_all: bool = False) -> None:
        super().__init__()
        self.feature_names = list(in_dims)
        self.out_dim = out_dim
        self.projected = [name for name, dim in in_dims.items() if project_all or dim != out_dim]
        self.uniform = len(self.projected) == len(self.feature_names) and len({in_dims[n] for n in self.projected}) == 1
        if self.uniform:
            width = in_dims[self.projected[0]]
            bound = 1.0 / math.sqrt(width)  # nn.Linear's default initialisation
            self.weight = nn.Parameter(torch.empty(len(self.projected), out_dim, width).uniform_(-bound, bound))
            self.projections = nn.ModuleList()
        else:
            self.projections = nn.ModuleList(nn.Linear(in_dims[name], out_dim, bias=False) for name in self.projected)

    @property
    def in_width(self) -> int:
        """``d`` of a ``uniform`` projection."""
        return int(self.weight.shape[2])

    def maps(self) -> dict[str, torch.Tensor]:
        """``name -> [D, d_f]`` map of each projected feature (``y = x @ map.T``)."""
        if self.uniform:
            return dict(zip(self.projected, self.weight.unbind(0)))
        return {name: linear.weight for name, linear in zip(self.projected, self.projections)}

    def project_stacked(self, fields: torch.Tensor) -> torch.Tensor:
        """Args: fields ``[B, F, d]`` in field order (``uniform`` only). Returns ``[B, F, D]``."""
        return torch.bmm(fields.transpose(0, 1), self.weight.transpose(1, 2)).transpose(0, 1).contiguous()

    def forward(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """Args: pooled: ``name -> [B, d_f]``. Returns ``[B, F, D]`` in field order."""
        if self.uniform:
            return self.project_stacked(torch.stack([pooled[name] for name in self.feature_names], dim=1))
        fields = dict(pooled)
        for name, linear in zip(self.projected, self.projections):
            fields[name] = linear(fields[name])
        return torch.stack([fields[name] for name in self.feature_names], dim=1)


class SparseArch(nn.Module):
    """Turns a method's pooled ``KeyedTensor`` into fields ``[B, F, D]``.

    Holds no tables (the model owns the method as ``model.embedding``, so TorchRec sees
    each table once); a ``ProjectionArch`` is built when some width differs from ``D`` or
    ``project_all`` asks for a per-field map on every feature.

    Args:
        dims: width of each feature, in field order (see ``feature_dims``).
        embedding_dim: the common width ``D`` of the fields.
        project_all: project every field through its own ``Linear(d_f, D)``.
    """

    def __init__(self, dims: dict[str, int], embedding_dim: int, project_all: bool = False) -> None:
        super().__init__()
        if not dims:
            raise ValueError("the embedding method has no sparse features")
        self.feature_names = list(dims)
        self.embedding_dim = embedding_dim
        needs_projection = project_all or any(dim != embedding_dim for dim in dims.values())
        self.projection = ProjectionArch(dims, embedding_dim, project_all) if needs_projection else None

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def forward(self, pooled: KeyedTensor) -> torch.Tensor:
        """Args: pooled: the method's output (a ``KeyedTensor`` or a lazy awaitable of one)."""
        if list(pooled.keys()) == self.feature_names:
            if self.projection is None:
                return pooled.values().reshape(-1, self.num_features, self.embedding_dim)
            if self.projection.uniform:
                return self.projection.project_stacked(pooled.values().reshape(-1, self.num_features, self.projection.in_width))
        by_name = pooled.to_dict()
        if self.projection is not None:
            return self.projection(by_name)
        return torch.stack([by_name[name] for name in self.feature_names], dim=1)


class LearnedConstant(nn.Module):
    """The dense arch of a model without dense features: one learned ``[D]`` vector per row.

    With it, DLRM's dot interaction keeps a first-order term ``<c, e_f>`` per feature and
    TorchRec's ``InteractionArch`` / ``InteractionDCNArch`` are used unchanged.

    Args:
        dim: ``D``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, dense_features: torch.Tensor) -> torch.Tensor:
        """Args: dense_features: ``[B, 0]`` (only its batch size is used). Returns ``[B, D]``."""
        return self.value.unsqueeze(0).expand(dense_features.shape[0], -1)


def make_dense_arch(num_dense: int, layer_sizes: list[int], embedding_dim: int) -> nn.Module:
    """Bottom MLP ``num_dense -> layer_sizes -> D`` (TorchRec ``DenseArch``), or a ``LearnedConstant``.

    Args:
        num_dense: number of dense features (0: no dense arch).
        layer_sizes: hidden sizes; ``D`` is appended.
        embedding_dim: ``D``.
    """
    if num_dense == 0:
        return LearnedConstant(embedding_dim)
    return DenseArch(num_dense, [*layer_sizes, embedding_dim])


class LogitHead(nn.Module):
    """ReLU MLP over ``layer_sizes`` then a 1-unit linear logit (TorchRec's ``OverArch``, hidden may be empty).

    Args:
        in_features: input width.
        layer_sizes: hidden sizes (may be empty).
    """

    def __init__(self, in_features: int, layer_sizes: list[int]) -> None:
        super().__init__()
        self.mlp: nn.Module = MLP(in_features, layer_sizes) if layer_sizes else nn.Identity()
        self.logit = nn.Linear(layer_sizes[-1] if layer_sizes else in_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features: ``[B, in_features]``. Returns ``[B, 1]``."""
        return self.logit(self.mlp(features))


def dot_interaction(num_sparse: int, embedding_dim: int) -> tuple[nn.Module, int]:
    """DLRM's pairwise dots over ``[dense, fields]`` plus the dense vector; returns (module, width)."""
    return InteractionArch(num_sparse), embedding_dim + choose(num_sparse + 1, 2)


def dcn_interaction(num_layers: int, low_rank: int) -> InteractionBuilder:
    """DCNv2's low-rank cross net over the flat ``[dense, fields]``; a builder like ``dot_interaction``.

    Args:
        num_layers: cross layers.
        low_rank: rank of each layer's ``W = U V``.
    """

    def build(num_sparse: int, embedding_dim: int) -> tuple[nn.Module, int]:
        width = (num_sparse + 1) * embedding_dim
        crossnet = LowRankCrossNet(in_features=width, num_layers=num_layers, low_rank=low_rank)
        return InteractionDCNArch(num_sparse, crossnet), width

    return build


class FMInteraction(nn.Module):
    """Factorization-machine second-order term ``Σ_{i<j} <v_i, v_j>`` in O(N·D)."""

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """Args: fields: ``[B, N, D]``. Returns ``[B, 1]``."""
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_squares = fields.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1, keepdim=True)


class CTRModel(nn.Module):
    """Common interface: ``embedding`` (the method) and ``forward(dense, sparse) -> logits [B]``.

    ``weighs_each_field``: whether the interaction already has its own weights per field
    column (then a method that shares rows between features needs no per-field projection).

    Args:
        embedding: the embedding method (or any EBC-like module).
        embedding_dim: the field width ``D`` of the interactions.
        field_projection: a learned ``Linear(d_f, D)`` per field before the interaction (see
            ``ModelConfig.field_projection``).
    """

    weighs_each_field: ClassVar[bool] = False

    def __init__(self, embedding: nn.Module, embedding_dim: int, field_projection: bool = False) -> None:
        super().__init__()
        self.embedding = embedding
        self.sparse_arch = SparseArch(feature_dims(embedding), embedding_dim, field_projection)

    @classmethod
    def from_config(cls, cfg: ModelConfig, embedding: nn.Module, num_dense: int) -> CTRModel:  # pragma: no cover - abstract
        """Build from a ``ModelConfig`` (each model reads the keys it uses)."""
        raise NotImplementedError

    @property
    def num_sparse(self) -> int:
        return self.sparse_arch.num_features

    def embed(self, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """Look up and pool the sparse features. Returns fields ``[B, F, D]``."""
        return self.sparse_arch(self.embedding(sparse_features))

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        raise NotImplementedError
