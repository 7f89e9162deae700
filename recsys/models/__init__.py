"""CTR models (DLRM, DCNv2, DeepFM) over any embedding method, built by name.

Example:
    >>> from recsys.models import build_model, TrainModel                  # doctest: +SKIP
    >>> model = build_model(cfg.model, method, num_dense=spec.num_dense)   # doctest: +SKIP
    >>> loss, logits = TrainModel(model)(batch)                            # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from recsys.config import ModelConfig
from recsys.models.blocks import CTRModel, FMInteraction, LearnedConstant, ProjectionArch, SparseArch
from recsys.models.dcn import DCNv2
from recsys.models.deepfm import DeepFM
from recsys.models.dlrm import DLRM
from recsys.models.train import TrainModel

ModelBuilder = Callable[[ModelConfig, nn.Module, int], CTRModel]

MODELS: dict[str, ModelBuilder] = {
    "dlrm": DLRM.from_config,
    "dcnv2": DCNv2.from_config,
    "deepfm": DeepFM.from_config,
}


def available_models() -> list[str]:
    return sorted(MODELS)


def build_model(cfg: ModelConfig, method: nn.Module, num_dense: int) -> CTRModel:
    """Build ``cfg.name`` over an embedding method.

    Args:
        cfg: the model section of the experiment config.
        method: the embedding method (any ``EmbeddingMethod``, or an EBC-like module).
        num_dense: number of dense features (0 allowed).
    """
    try:
        builder = MODELS[cfg.name]
    except KeyError:
        raise KeyError(f"unknown model '{cfg.name}'; available: {', '.join(available_models())}") from None
    return builder(cfg, method, num_dense)


__all__ = [
    "CTRModel",
    "DCNv2",
    "DLRM",
    "DeepFM",
    "FMInteraction",
    "LearnedConstant",
    "MODELS",
    "ProjectionArch",
    "SparseArch",
    "TrainModel",
    "available_models",
    "build_model",
]
