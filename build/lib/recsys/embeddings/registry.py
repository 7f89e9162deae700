"""Methods registered by name: ``register_method``, ``get_method``, ``build_method``.

Example:
    >>> from recsys.embeddings import build_method, available_methods
    >>> "full" in available_methods()
    True
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from recsys.embeddings.base import EmbeddingMethod, MethodContext, MethodOptions

_METHODS: dict[str, type[EmbeddingMethod]] = {}
M = TypeVar("M", bound=type[EmbeddingMethod])


def register_method(cls: M) -> M:
    """Class decorator: make a method available under ``cls.name``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method '{cls.name}' is already registered by {_METHODS[cls.name].__module__}")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[EmbeddingMethod]:
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}'; available: {', '.join(available_methods())}") from None


def parse_options(name: str, options: MethodOptions | dict[str, Any] | None) -> MethodOptions:
    """Validate a method's options (a dict from YAML, or an Options instance)."""
    cls = get_method(name)
    if isinstance(options, cls.Options):
        return options
    try:
        return cls.Options.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid options for method '{name}': {problems}") from exc


def build_method(name: str, ctx: MethodContext, options: MethodOptions | dict[str, Any] | None = None) -> EmbeddingMethod:
    """Build a registered method for a context; the result is checked against the budget."""
    cls = get_method(name)
    method = cls(ctx, parse_options(name, options))
    method.check_budget()
    return method


