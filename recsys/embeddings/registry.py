"""Methods registered by name: ``register_method``, ``get_method``, ``build_method``, and
``MethodSpec``, a method with its validated options as one typed value.

Example:
    >>> from recsys.embeddings import build_method, available_methods
    >>> "full" in available_methods()
    True
    >>> MethodSpec.model_validate({"method": "unified", "options": {"num_tables": 2}}).options.num_tables
    2
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_serializer, field_validator, model_validator

from recsys.embeddings.base import EmbeddingMethod, IdScheme, MethodContext, MethodOptions

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


def registered_name(name: str) -> str:
    """``name`` if a method of that name is registered, else a ValueError naming the registered
    ones (what a pydantic field validator of a method name raises)."""
    try:
        get_method(name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    return name


def parse_options(name: str, options: MethodOptions | dict[str, Any] | None) -> MethodOptions:
    """Validate a method's options (a dict from YAML, or an Options instance)."""
    cls = get_method(name)
    if isinstance(options, cls.Options):
        return options
    try:
        return cls.Options.model_validate(options or {})
    except ValidationError as exc:
        raise OptionsError(name, [(tuple(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]) from exc


class OptionsError(ValueError):
    """Invalid options of a method; ``keys`` are the option key paths at fault (``base.options.rows``)."""

    def __init__(self, method: str, problems: list[tuple[tuple[str, ...], str]]) -> None:
        self.keys = [loc for loc, _ in problems]
        text = "; ".join(f"{'.'.join(loc) or '(options)'}: {message}" for loc, message in problems)
        super().__init__(f"invalid options for method '{method}': {text}")


def build_method(name: str, ctx: MethodContext, options: MethodOptions | dict[str, Any] | None = None) -> EmbeddingMethod:
    """Build a registered method for a context (``cls.build``: a wrapper builds its base first);
    the result is checked against the budget."""
    method = get_method(name).build(ctx, parse_options(name, options))
    method.check_budget()
    return method


class MethodSpec(BaseModel):
    """A registered method and its options, validated by that method's ``Options``:
    ``{method: unified, options: {num_tables: 2}}``; a bare name means default options.
    A wrapper's ``base`` is one, so ``dsl`` over ``unified`` over its options is one value."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("full", description="registered method name (a bare `NAME` instead of this mapping: its default options)")
    options: MethodOptions = Field(
        default_factory=dict,
        validate_default=True,
        description="options of that method (the keys of its own table here)",  # type: ignore[arg-type]
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"method": data} if isinstance(data, str) else data

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        return registered_name(method)

    @field_validator("options", mode="before")
    @classmethod
    def _method_options(cls, options: Any, info: ValidationInfo) -> MethodOptions:
        if "method" not in info.data:  # the method itself is the error
            return MethodOptions()
        Options = get_method(info.data["method"]).Options
        return options if isinstance(options, Options) else Options.model_validate(options or {})

    @field_serializer("options")
    def _dump_options(self, options: MethodOptions, info: Any) -> dict[str, Any]:
        return options.model_dump(mode=info.mode, exclude_unset=info.exclude_unset, exclude_defaults=info.exclude_defaults)

    @property
    def id_scheme(self) -> IdScheme:
        """The ids the method reads (a wrapper: its base's)."""
        return get_method(self.method).id_scheme_for(self.options)

    @property
    def uses_value_counts(self) -> bool:
        """Whether the method (or the base of a wrapper) sizes its tables from value counts."""
        return get_method(self.method).value_counts_for(self.options)

    def build(self, ctx: MethodContext) -> EmbeddingMethod:
        return build_method(self.method, ctx, self.options)


def method_spec(name: str, options: MethodOptions | dict[str, Any] | None = None) -> MethodSpec:
    """``MethodSpec`` of a method and its options (a dict from a config, or an Options instance);
    bad options raise like ``parse_options``."""
    return MethodSpec(method=get_method(name).name, options=parse_options(name, options))
