"""``WrappedMethod``: the base class of methods that wrap another (``dsl``, ``optembed``).

A wrapper's options derive from ``WrapperOptions``: ``base`` is a typed ``MethodSpec`` (the
wrapped method and its validated options), so ``dsl`` over ``unified`` with its options is
one value, and a bad key names its full path (``base.options.num_tables``). The registry
builds the base from it (``WrappedMethod.build``, in the context ``base_context`` gives) and
hands it to the constructor; the hooks a wrapper does not change are delegated to the base
here, in one place. The old spelling ``base: NAME`` + ``base_options: {...}`` is still read.

Example:
    >>> method = build_method("dsl", ctx, {"base": {"method": "unified", "options": {"num_tables": 2}}})  # doctest: +SKIP
    >>> method.base.name, method.id_scheme                                                            # doctest: +SKIP
    ('unified', 'raw')
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import torch
from pydantic import Field, model_validator
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings.base import EmbeddingMethod, IdScheme, MethodContext, MethodOptions, Optimizers
from recsys.embeddings.registry import MethodSpec, build_method, get_method


class WrapperOptions(MethodOptions):
    """Options of a method wrapping another: ``base`` is the wrapped method with its options."""

    base: MethodSpec = Field(
        default_factory=MethodSpec,
        description="the wrapped method, ``{method: NAME, options: {...}}`` (or just ``NAME``); the options are those of NAME's table",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, data: Any) -> Any:
        """``base: NAME`` with ``base_options: {...}`` (configs and artifacts written before ``base`` was typed)."""
        if not isinstance(data, Mapping) or "base_options" not in data:
            return data
        data = dict(data)
        options, base = data.pop("base_options"), data.get("base", "full")
        if not isinstance(base, str):
            raise ValueError("give the base method's options as base.options, not base_options")
        data["base"] = {"method": base, "options": options or {}}
        return data


def wrapper_options(options: MethodOptions) -> WrapperOptions:
    if not isinstance(options, WrapperOptions):
        raise TypeError(f"a wrapper's options derive from WrapperOptions, got {type(options).__name__}")
    return options


class WrappedMethod(EmbeddingMethod):
    """A method around a ``base`` method it is handed (built by the registry from ``options.base``).

    Subclasses set ``Options`` to a ``WrapperOptions`` subclass, may override ``base_context``
    (the base's budget) and call ``super().__init__(ctx, options, base)``. Delegated to the base
    unless overridden: ``ebc``, ``id_scheme``, ``prepare``, ``output_dims``,
    ``shares_rows_across_features``, ``aux_loss``, ``separate_optimizers``, ``on_train_begin``,
    ``on_train_step``, ``on_train_resume``, ``servable``, ``collision_stats``; ``diagnostics`` nests the base's.
    """

    Options = WrapperOptions

    def __init__(self, ctx: MethodContext, options: MethodOptions, base: EmbeddingMethod) -> None:
        super().__init__(ctx, options)
        self.base = base

    @classmethod
    def base_context(cls, ctx: MethodContext, options: WrapperOptions) -> MethodContext:
        """The context the base is built in; by default the wrapper's without a budget."""
        return replace(ctx, budget_bytes=None)

    @classmethod
    def build_base(cls, ctx: MethodContext, options: MethodOptions) -> EmbeddingMethod:
        """The base method of a wrapper with ``options`` in context ``ctx`` (the wrapper's)."""
        spec = wrapper_options(options).base
        return build_method(spec.method, cls.base_context(ctx, wrapper_options(options)), spec.options)

    @classmethod
    def build(cls, ctx: MethodContext, options: MethodOptions) -> EmbeddingMethod:
        return cls(ctx, options, cls.build_base(ctx, options))

    def export_options(self) -> dict[str, Any]:
        """This wrapper's options, with ``base`` as the base records its own (e.g. a ``hybrid``'s chosen sizes)."""
        return {**super().export_options(), "base": {"method": self.base.name, "options": self.base.export_options()}}

    @classmethod
    def id_scheme_for(cls, options: MethodOptions) -> IdScheme:
        spec = wrapper_options(options).base
        return get_method(spec.method).id_scheme_for(spec.options)

    @classmethod
    def value_counts_for(cls, options: MethodOptions) -> bool:
        spec = wrapper_options(options).base
        return get_method(spec.method).value_counts_for(spec.options)

    @property
    def id_scheme(self) -> IdScheme:
        return self.base.id_scheme

    @property
    def ebc(self) -> nn.Module:  # type: ignore[override]
        """The base's table collection (stock, or sharded once DMP has swapped it in)."""
        return self.base.ebc

    def prepare(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return self.base.prepare(features)

    def output_dims(self) -> dict[str, int]:
        return self.base.output_dims()

    def shares_rows_across_features(self) -> bool:
        return self.base.shares_rows_across_features()

    def aux_loss(self) -> torch.Tensor | None:
        return self.base.aux_loss()

    def separate_optimizers(self) -> Optimizers:
        return self.base.separate_optimizers()

    def on_train_begin(self, total_steps: int) -> None:
        self.base.on_train_begin(total_steps)

    def on_train_step(self, step: int) -> None:
        self.base.on_train_step(step)

    def on_train_resume(self, steps: int) -> None:
        self.base.on_train_resume(steps)

    def servable(self) -> bool:
        return self.base.servable()

    def reports_collisions(self) -> bool:
        return self.base.reports_collisions()

    def collision_stats(self, vocab_ids: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.base.collision_stats(vocab_ids)

    def diagnostics(self) -> dict[str, Any]:
        """The base's diagnostics under ``base`` (none when it has none)."""
        base = self.base.diagnostics()
        return {"base": base} if base else {}
