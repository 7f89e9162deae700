"""Config → method context → method → model: how a run's pieces are built from its config, in one place.

Training builds every phase through it, ``recsys export`` rebuilds a finished run with it,
``recsys tune`` checks each method's budget with it, and the bench and tests use it, so the
context (budget, value counts) is the same wherever a method is built.

Example:
    >>> parts = Assembly.of(cfg)                                   # doctest: +SKIP
    >>> method = parts.method(parts.phases()[-1])                  # doctest: +SKIP
    >>> model = parts.model(method)                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from recsys.config import ExperimentConfig
from recsys.data.vocab import read_value_counts
from recsys.embeddings import EmbeddingMethod, MethodContext, Phase, build_method, method_spec
from recsys.features import DatasetSpec, load_dataset_spec
from recsys.models import build_model
from recsys.models.blocks import CTRModel
from recsys.storage import StoragePath


def method_context(cfg: ExperimentConfig, spec: DatasetSpec, data_path: str | os.PathLike | StoragePath | None = None) -> MethodContext:
    """The method context of ``cfg`` over ``spec``: widths, the budget and, for a method that sizes
    itself from them (``uses_value_counts``), the vocabularies' value counts read from ``data_path``
    (default: ``cfg.data.path``)."""
    e = cfg.embedding
    ctx = MethodContext.from_spec(spec, cfg.model.embedding_dim, e.compression, e.budget_bytes)
    if method_spec(e.method, e.options).uses_value_counts:  # a wrapper sizes itself as its base does
        ctx = ctx.with_value_counts(read_value_counts(spec, data_path or cfg.data.path))
    return ctx


@dataclass(frozen=True)
class Assembly:
    """The config, dataset contract and method context of one experiment; builds its method and model."""

    cfg: ExperimentConfig
    spec: DatasetSpec
    ctx: MethodContext

    @classmethod
    def of(cls, cfg: ExperimentConfig, spec: DatasetSpec | None = None, data_path: str | os.PathLike | StoragePath | None = None) -> Assembly:
        """``spec`` defaults to the ``dataset.json`` at ``data_path`` (default: ``cfg.data.path``)."""
        spec = spec if spec is not None else load_dataset_spec(data_path or cfg.data.path)
        return cls(cfg, spec, method_context(cfg, spec, data_path))

    def method(self, phase: Phase | None = None) -> EmbeddingMethod:
        """The configured method (checked against its budget), entered into ``phase`` when given."""
        e = self.cfg.embedding
        method = build_method(e.method, self.ctx, e.options)
        if phase is not None:
            method.enter_phase(phase)
        return method

    def phases(self) -> list[Phase]:
        return self.method().phases()

    def model(self, method: EmbeddingMethod) -> CTRModel:
        """The configured CTR model over ``method``."""
        return build_model(self.cfg.model, method, len(self.spec.dense_fields))
