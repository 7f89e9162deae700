"""CTR models (DLRM, DCNv2, DeepFM) over any embedding method, built by name.

Example:
    >>> from recsys.models import build_model, TrainModel                  # doctest: +SKIP
    >>> model = build_model(cfg.model, method, num_dense=spec.num_dense)   # doctest: +SKIP
    >>> loss, logits = TrainModel(model)(batch)                            # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from recsys.config import ModelConfig
from recsys.embeddings.base import EmbeddingMethod
from recsys.models.blocks import CTRModel, FMInteraction, LearnedConstant, ProjectionArch, SparseArch
from recsys.models.dcn import DCNv2
from recsys.models.deepfm import DeepFM
from recsys.models.dlrm import DLRM
from recsys.models.train import TrainModel

MODELS: dict[str, type[CTRModel]] = {"dlrm": DLRM, "dcnv2": DCNv2, "deepfm": DeepFM}


def available_models() -> list[str]:
    return sorted(MODELS)


def resolve_model_config(cfg: ModelConfig, method: nn.Module) -> ModelConfig:
    """``cfg`` with its defaults that depend on the method decided (``field_projection``).

    Example:
        >>> resolve_model_config(ModelConfig(), unified_method).field_projection  # doctest: +SKIP
        True
    """
    if cfg.field_projection is not None:
        return cfg
    shares = isinstance(method, EmbeddingMethod) and method.shares_rows_across_features()  # a stock EBC shares nothing
    needed = shares and not MODELS[cfg.name].weighs_each_field
    return cfg.model_copy(update={"field_projection": needed})


def build_model(cfg: ModelConfig, method: nn.Module, num_dense: int) -> CTRModel:
    """Build ``cfg.name`` over an embedding method.

    Args:
        cfg: the model section of the experiment config (method-dependent defaults are
            resolved by ``resolve_model_config``).
        method: the embedding method (any ``EmbeddingMethod``, or an EBC-like module).
        num_dense: number of dense features (0 allowed).
    """
    try:
        model_class = MODELS[cfg.name]
    except KeyError:
        raise KeyError(f"unknown model '{cfg.name}'; available: {', '.join(available_models())}") from None
    return model_class.from_config(resolve_model_config(cfg, method), method, num_dense)


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
    "resolve_model_config",
    "available_models",
    "build_model",
]
