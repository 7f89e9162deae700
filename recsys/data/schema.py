"""The schema YAML of a generic CSV or Parquet input, and checks of field names.

Example ``schema.yaml``::

    delimiter: ","          # one character; default ","
    header: true            # first line holds column names; default true
    label: clicked          # 0/1 column
    dense: [price, age]     # numeric columns (sign(x) * log1p(|x|); empty = 0)
    transforms: {price: standardize, age: {quantile: 16}}  # per dense column: slog1p (default),
                            # standardize, none, or quantile buckets (a sparse field; default 16)
    sparse: [user, item]    # categorical columns
    multi_valued: {tags: "|"}  # list-valued categorical columns and their separator
    drop: [request_id]      # columns to ignore
    # columns: [...]        # names of all columns; required (only) with header: false

Every column of the file must appear in exactly one of label/dense/sparse/multi_valued/drop.
Parquet input uses the same keys; ``delimiter`` and ``header`` do not apply to it, and list
columns are multi-valued whatever their separator.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.data.errors import ConversionError
from recsys.data.transforms import DEFAULT_BUCKETS, TRANSFORMS, TransformSpec
from recsys.features import LABEL_COLUMN, PROB_COLUMN

_RESERVED_SUFFIXES = ("__id", "__w")


class CsvSchema(BaseModel):
    """Columns of a generic CSV file and what each one is."""

    model_config = ConfigDict(extra="forbid")

    delimiter: str = ","
    header: bool = True
    columns: list[str] | None = None
    label: str
    dense: list[str] = []
    sparse: list[str] = []
    multi_valued: dict[str, str] = {}
    drop: list[str] = []
    transforms: dict[str, str | dict[str, int]] = {}

    def transform_specs(self) -> dict[str, TransformSpec]:
        """The transform of every dense column (checked by ``load_csv_schema``)."""
        specs = {}
        for name in self.dense:
            value = self.transforms.get(name, "slog1p")
            if isinstance(value, dict):
                specs[name] = TransformSpec("quantile", value.get("quantile", DEFAULT_BUCKETS))
            else:
                specs[name] = TransformSpec(value, DEFAULT_BUCKETS)  # type: ignore[arg-type]
        return specs

    def sparse_order(self) -> list[str]:
        """Sparse fields: ``sparse`` in order, then multi-valued columns not listed there."""
        return self.sparse + [n for n in self.multi_valued if n not in self.sparse]

    def roles(self) -> dict[str, str]:
        """Column name -> the schema key that lists it."""
        roles: dict[str, str] = {}
        listed = [("label", [self.label]), ("dense", self.dense), ("sparse", self.sparse), ("drop", self.drop)]
        listed.insert(3, ("multi_valued", [n for n in self.multi_valued if n not in self.sparse]))
        for key, names in listed:
            for name in names:
                if name in roles:
                    raise ValueError(f"column '{name}' is listed under both '{roles[name]}' and '{key}'")
                roles[name] = key
        return roles


def load_csv_schema(path: Path) -> CsvSchema:
    """Read and check a schema YAML; errors name the file and the key."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConversionError(path, f"cannot read schema: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConversionError(path, f"invalid YAML: {exc}", line=None if mark is None else mark.line + 1) from exc
    if not isinstance(raw, dict):
        raise ConversionError(path, "schema must be a mapping with at least a 'label' key")
    try:
        schema = CsvSchema.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        raise ConversionError(path, f"invalid schema: {err['msg']}", field=key) from exc
    _check(schema, path)
    return schema


def _check(schema: CsvSchema, path: Path) -> None:
    if len(schema.delimiter) != 1:
        raise ConversionError(path, "must be exactly one character", field="delimiter")
    if not schema.header and not schema.columns:
        raise ConversionError(path, "required when header is false", field="columns")
    if schema.header and schema.columns is not None:
        raise ConversionError(path, "only allowed with header: false (names come from the header)", field="columns")
    for name, value in schema.transforms.items():
        key = f"transforms.{name}"
        if name not in schema.dense:
            raise ConversionError(path, "transforms apply to columns listed under 'dense'", field=key)
        if isinstance(value, dict):
            if set(value) != {"quantile"} or value["quantile"] < 2:
                raise ConversionError(path, "expected {quantile: N} with N >= 2 buckets", field=key)
        elif value not in TRANSFORMS:
            raise ConversionError(path, f"unknown transform '{value}'; transforms: {', '.join(TRANSFORMS)}", field=key)
    for name, sep in schema.multi_valued.items():
        if not sep:
            raise ConversionError(path, "separator must not be empty", field=f"multi_valued.{name}")
    try:
        roles = schema.roles()
    except ValueError as exc:
        raise ConversionError(path, str(exc), field="columns") from exc
    for name, key in roles.items():
        if key not in ("label", "drop"):
            problem = field_name_problem(name)
            if problem:
                raise ConversionError(path, f"field name '{name}' {problem}", field=key)
    if schema.columns is not None:
        missing = [n for n in roles if n not in schema.columns]
        if missing:
            raise ConversionError(path, f"not among 'columns': {', '.join(missing)}", field=roles[missing[0]])


def field_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a field name (it names Parquet columns and a vocabulary file)."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        return "must be non-empty, not start with '.', and have no path separators"
    if name in (LABEL_COLUMN, PROB_COLUMN) or name.endswith(_RESERVED_SUFFIXES):
        return f"is reserved ('{LABEL_COLUMN}', '{PROB_COLUMN}' and names ending in __id/__w name other columns)"
    return None


def check_columns(schema: CsvSchema, header: list[str], schema_path: Path, input_path: Path, source: str = "header") -> None:
    """Every schema column is in the file (its ``source`` of names) and every file column is in the schema."""
    roles = schema.roles()
    missing = [n for n in roles if n not in header]
    if missing:
        raise ConversionError(
            input_path,
            f"column listed under '{roles[missing[0]]}' in {schema_path} is missing from the {source}",
            line=1 if schema.header and source == "header" else None,
            field=missing[0],
        )
    unlisted = [n for n in header if n not in roles]
    if unlisted:
        raise ConversionError(
            schema_path,
            f"column of {input_path} not listed under label/dense/sparse/multi_valued/drop (use drop to ignore it)",
            field=unlisted[0],
        )
