"""The configuration reference (``docs/configuration.md``), rendered from the config models.

``render_reference()`` walks :class:`recsys.config.ExperimentConfig` section by section (key
path, type, default, description of every field) and then every registered embedding
method's ``Options`` model (the keys of ``embedding.options``). ``recsys config-reference
[--out FILE]`` prints or writes it; a unit test keeps the committed file equal to it.

Example:
    >>> from recsys.config_reference import render_reference
    >>> "`training.sparse_lr`" in render_reference()
    True
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = "recsys config-reference --out docs/configuration.md"

_BOUNDS = ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤"), (annotated_types.Lt, "lt", "<"))


def _is_section(annotation: Any) -> bool:
    """A model with fields of its own (a method's options, typed ``MethodOptions`` until the method is known, is a leaf)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and bool(annotation.model_fields)


def leaf_fields(model: type[BaseModel], prefix: str = "", walk: bool = True) -> Iterator[tuple[str, FieldInfo]]:
    """``(key.path, field)`` for every leaf of ``model`` (nested models are walked, not listed, unless ``walk`` is false)."""
    for name, field in model.model_fields.items():
        if walk and _is_section(field.annotation):
            yield from leaf_fields(field.annotation, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            yield f"{prefix}{name}", field


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int | None``, ``"sgd" | "adagrad"``, ``dict[str, int]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:  # e.g. PositiveInt inside a union: int > 0
        bounds = _bounds_of(annotation.__metadata__)
        return type_name(args[0]) + (f" {' '.join(bounds)}" if bounds else "")
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if _is_section(annotation):  # a nested model given as one value (a wrapper's ``base``)
        return "{" + ", ".join(annotation.model_fields) + "}"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds_of(metadata: Any) -> list[str]:
    out = []
    for item in metadata:
        for kind, attr, symbol in _BOUNDS:
            if isinstance(item, kind):
                out.append(f"{symbol} {getattr(item, attr)}")
    return out


def field_type(field: FieldInfo) -> str:
    """The field's type, with its numeric bounds (``int ≥ 1``)."""
    bounds = _bounds_of(field.metadata)
    return type_name(field.annotation) + (f", {', '.join(bounds)}" if bounds else "")


def field_default(field: FieldInfo) -> str:
    """The default as it would be written in YAML/JSON (``null``, ``true``, ``"full"``, ``[64, 32]``)."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, ensure_ascii=False, default=str)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def _markdown(text: str) -> str:
    """reST double backticks to Markdown code spans."""
    return text.replace("``", "`")


def fields_table(model: type[BaseModel], prefix: str = "", walk: bool = True) -> list[str]:
    """A Markdown table of ``model``'s leaf fields under ``prefix`` (``walk``: see ``leaf_fields``)."""
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, field in leaf_fields(model, prefix, walk):
        lines.append(f"| {_code(key)} | {_code(field_type(field))} | {_code(field_default(field))} | {_cell(_markdown(field.description or ''))} |")
    return lines


def render_reference() -> str:
    """The whole reference: one table per config section, then one per registered method."""
    from recsys.config import ExperimentConfig
    from recsys.embeddings import available_methods, get_method

    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the config models by `recsys config-reference`; do not edit. Regenerate: `{REGENERATE}` -->",
        "",
        "An experiment YAML has the sections below (each inline, or a path to a YAML file holding it);",
        "any key can be overridden on the command line with `--set key.path=value` (the value is parsed",
        "as YAML). Unknown keys are errors. Types: `A | B` is either, `≥ 1` a bound the value must meet;",
        "defaults are written as in YAML/JSON (`null`: unset).",
        "",
    ]
    for section, field in ExperimentConfig.model_fields.items():
        lines += [f"## `{section}`", ""]
        if field.description:
            lines += [_markdown(field.description[0].upper() + field.description[1:]) + ".", ""]
        lines += [*fields_table(field.annotation, f"{section}."), ""]  # type: ignore[arg-type]

    lines += [
        "## Embedding methods",
        "",
        "`embedding.method` names one of the registered methods below (`recsys methods` lists them too);",
        "`embedding.options` holds that method's options, checked against its table.",
        "",
    ]
    for name in available_methods():
        cls = get_method(name)
        doc = _markdown((cls.__doc__ or "").strip().split("\n\n")[0])
        lines += [f"### `{name}`", "", f"{' '.join(doc.split())} (`{cls.__module__}.{cls.__qualname__}`)", ""]
        if cls.Options.model_fields:
            lines += [*fields_table(cls.Options, "embedding.options.", walk=False), ""]
        else:
            lines += ["No options.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_reference(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_reference(), encoding="utf-8")
    return path
