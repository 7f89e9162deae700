"""The input formats: which columns are read, and how a chunk of strings becomes field values.

* ``criteo``: Criteo Kaggle TSV, no header: label, I1..I13 (integers), C1..C26 (hex strings).
* ``avazu``: CSV with header; ``click`` is the label, ``id`` is dropped, ``hour`` (YYMMDDHH)
  becomes the sparse fields ``hour_of_day`` ("0".."23") and ``weekday`` ("0".."6", Monday 0).
* ``libfm``: ``label idx:val ...``; labels -1/0/1 (-1 -> 0); one multi-valued weighted sparse
  field ``features`` (raw value = the idx string, weight = val); or, with ``libfm_fields``
  ``positional``, one field per position (``recsys.data.fieldaware``).
* ``libffm``: ``label field:idx:val ...``; one weighted multi-valued field ``f<field>`` per field.
* ``csv``: any delimited file described by a schema YAML (``recsys.data.schema``).
* ``parquet``: Parquet files described by the same schema YAML (typed columns; list columns
  are multi-valued), read by record batches; rows are numbered within each file.

Blank lines are skipped (they are not bad rows); line numbers count them.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.errors import ConversionError, Issue
from recsys.data.fastrows import FastLayout, FastRows, fast_layout
from recsys.data.fieldaware import PositionRanges, parse_field_lines
from recsys.data.inputs import read_first_line
from recsys.data.parquet_reader import parquet_schema
from recsys.data.parse import SparseValues, as_array, parse_labels
from recsys.data.schema import CsvSchema, check_columns, field_name_problem, load_csv_schema
from recsys.data.sources import derive_hour, parse_libfm_lines
from recsys.data.splitting import parse_times
from recsys.data.textcheck import check_text_input
from recsys.data.textreader import TextFormat, read_header
from recsys.data.transforms import SLOG1P_SPEC, TransformSpec, stage_dense
from recsys.data.typed import (
    dense_values,
    is_number,
    is_text,
    label_values,
    sparse_multi,
    sparse_single,
    type_problem,
    value_type,
)

FormatName = Literal["criteo", "avazu", "libfm", "libffm", "csv", "parquet"]
FORMATS: tuple[str, ...] = ("criteo", "avazu", "libfm", "libffm", "csv", "parquet")
SCHEMA_FORMATS = ("csv", "parquet")
SourceKind = Literal["single", "multi", "hour_of_day", "weekday", "libfm", "fields", "bucket"]
LibfmFields = Literal["bag", "positional"]
CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))
LIBFM_FIELD = "features"


@dataclass(frozen=True)
class SparseSource:
    """One sparse field and the column it comes from."""

    name: str
    column: str
    kind: SourceKind = "single"
    separator: str | None = None

    @property
    def multi_valued(self) -> bool:
        return self.kind in ("multi", "libfm", "fields")

    @property
    def weighted(self) -> bool:
        return self.kind in ("libfm", "fields")


@dataclass
class ParsedChunk:
    """Field values of the rows of one chunk, in field order."""

    lines: np.ndarray
    label: np.ndarray
    dense: list[np.ndarray]
    sparse: list[SparseValues]
    times: np.ndarray | None = None  # the time column, for a split by time

    def __len__(self) -> int:
        return len(self.lines)

    def take(self, keep: np.ndarray) -> "ParsedChunk":
        return ParsedChunk(
            self.lines[keep],
            self.label[keep],
            [d[keep] for d in self.dense],
            [s.take(keep) for s in self.sparse],
            None if self.times is None else self.times[keep],
        )


@dataclass
class InputFormat:
    """Columns of one input file and their roles."""

    name: FormatName
    text: TextFormat | None  # None: Parquet input
    columns: list[str]  # the columns read
    label: str
    dense: list[str] = field(default_factory=list)
    sparse: list[SparseSource] = field(default_factory=list)
    label_values: tuple[float, ...] = (0.0, 1.0)
    time_column: str | None = None
    time_numeric: bool = True  # the cut points are numbers (else dates)
    transforms: dict[str, TransformSpec] = field(default_factory=dict)  # dense column -> transform (default slog1p)
    positional: int | None = None  # positional libFM: the number of fields
    ranges: PositionRanges | None = None  # positional libFM: each position's index range so far

    def fast(self) -> FastLayout | None:
        """The layout for the fast path (``recsys.data.fastrows``): unquoted text of a 0/1 label, dense columns and
        single-valued categorical columns, only '' missing, no time column; else (or when it is not built) None."""
        text = self.text
        if text is None or text.quoting or text.null_values != ("",) or self.time_column is not None or self.label_values != (0.0, 1.0):
            return None
        if any(src.kind != "single" or src.column != src.name for src in self.sparse) or self.name in ("libfm", "libffm"):
            return None
        return fast_layout(self.columns, self.label, self.dense, [src.column for src in self.sparse], text.delimiter)

    def parse(self, table: pa.Table | FastRows, lines: np.ndarray, pool: Executor | None = None) -> tuple[ParsedChunk, list[Issue]]:
        """Parse one chunk (columns in parallel on ``pool``); failing rows become issues."""
        if isinstance(table, FastRows):  # parsed by the fast path: plain rows, nothing to check
            specs = [self.transforms.get(n, SLOG1P_SPEC) for n in self.dense]
            dense = list(pool.map(stage_dense, table.dense, specs) if pool is not None else map(stage_dense, table.dense, specs))
            return ParsedChunk(lines, table.label, dense, [SparseValues(ids) for ids in table.sparse]), []
        if self.text is not None:
            table, lines = _drop_blank(table, lines)
        if self.name == "libffm" or self.positional is not None:
            return _parse_fields(self, table, lines)
        if self.name == "libfm":
            return _parse_libfm(self, table, lines)
        label, bad, label_col = label_values(as_array(table.column(self.label)), self.label_values)
        allowed = " or ".join(f"{v:g}" for v in self.label_values)
        issues = [Issue(bad, "bad_label", self.label, f"label must be {allowed}, found", label_col)]
        tasks: list[Callable[[], tuple[Any, Issue | None]]] = [partial(_dense, table, n, self.transforms.get(n, SLOG1P_SPEC)) for n in self.dense]
        tasks += [partial(_sparse, table, src) for src in self.sparse]
        results = list(pool.map(_call, tasks) if pool is not None else map(_call, tasks))
        issues += [issue for _, issue in results if issue is not None]
        dense = [values for values, _ in results[: len(self.dense)]]
        sparse = [values for values, _ in results[len(self.dense) :]]
        times = None
        if self.time_column is not None:
            col = as_array(table.column(self.time_column))
            times, bad_time = parse_times(col, self.time_numeric)
            kind = "a number" if self.time_numeric else "an ISO 8601 date/time"
            issues.append(Issue(bad_time, "bad_time", self.time_column, f"time must be {kind}, found", col))
        return ParsedChunk(lines, label, dense, sparse, times), issues


def _call(task: Callable[[], tuple[Any, Issue | None]]) -> tuple[Any, Issue | None]:
    return task()


def _dense(table: pa.Table, name: str, spec: TransformSpec) -> tuple[np.ndarray, Issue]:
    col = as_array(table.column(name))
    values, bad = dense_values(col)
    return stage_dense(values, spec), Issue(bad, "bad_dense", name, "non-numeric dense value", col)


def _sparse(table: pa.Table, src: SparseSource) -> tuple[SparseValues, Issue | None]:
    if src.kind == "single":
        return sparse_single(table.column(src.column)), None  # hashed chunk by chunk (no copy into one array)
    col = as_array(table.column(src.column))
    if src.kind == "multi":
        return sparse_multi(col, src.separator), None
    if src.kind in ("hour_of_day", "weekday"):
        values, bad = derive_hour(col, src.kind)
        if src.kind == "hour_of_day":
            return values, Issue(bad, "bad_hour", src.column, "hour must be YYMMDDHH, found", col)
        return values, None
    return sparse_single(col), None


def _drop_blank(table: pa.Table, lines: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Remove rows read from blank lines (every column null)."""
    if table.num_columns == 0 or table.num_rows == 0:
        return table, lines
    blank = as_array(table.column(0)).is_null()
    if not pc.any(blank).as_py():
        return table, lines
    for i in range(1, table.num_columns):
        blank = pc.and_(blank, as_array(table.column(i)).is_null())
    keep = pc.invert(blank)
    return table.filter(keep), lines[keep.to_numpy(zero_copy_only=False)]


def _parse_libfm(fmt: InputFormat, table: pa.Table, lines: np.ndarray) -> tuple[ParsedChunk, list[Issue]]:
    text, lines = _libfm_text(table, lines)
    label_col, values, bad_token, first_bad = parse_libfm_lines(text)
    label, bad_label = parse_labels(label_col, fmt.label_values)
    issues = [
        Issue(bad_label, "bad_label", "label", "label must be -1, 0 or 1, found", label_col),
        Issue(bad_token, "bad_feature", LIBFM_FIELD, "feature must be idx:value with a numeric value, found", first_bad),
    ]
    return ParsedChunk(lines, label, [], [values]), issues


def _parse_fields(fmt: InputFormat, table: pa.Table, lines: np.ndarray) -> tuple[ParsedChunk, list[Issue]]:
    text, lines = _libfm_text(table, lines)
    parsed = parse_field_lines(text, fmt.positional, fmt.ranges)
    label, bad_label = parse_labels(parsed.label, fmt.label_values)
    issues = [Issue(bad_label, "bad_label", "label", "label must be -1, 0 or 1, found", parsed.label), *parsed.issues]
    return ParsedChunk(lines, label, [], [parsed.values]), issues


def _libfm_text(table: pa.Table, lines: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    text = pc.utf8_trim_whitespace(as_array(table.column(0)))
    keep = pc.not_equal(text, "")
    if not pc.all(keep).as_py():
        text, lines = text.filter(keep), lines[keep.to_numpy(zero_copy_only=False)]
    return text, lines


def _libfm(fmt: str, path: Path, fields: LibfmFields) -> InputFormat:
    text = TextFormat("\x1f", header=False, quoting=False, null_values=("",))
    labels = (-1.0, 0.0, 1.0)
    if fmt == "libffm" or fields == "positional":
        positional = None
        if fmt == "libfm":
            first = read_first_line(path).decode("utf-8", errors="replace").split()
            if len(first) < 2:
                raise ConversionError(path, "positional libFM needs a first line 'label idx:val ...'", line=1)
            positional = len(first) - 1
        return InputFormat(
            fmt,
            text,
            ["line"],
            "label",
            sparse=[SparseSource("fields", "line", "fields")],  # type: ignore[arg-type]
            label_values=labels,
            positional=positional,
            ranges=None if positional is None else PositionRanges(positional),
        )
    return InputFormat("libfm", text, ["line"], "label", sparse=[SparseSource(LIBFM_FIELD, "line", "libfm")], label_values=labels)


def open_format(fmt: str, input_path: Path, schema_path: Path | None, libfm_fields: LibfmFields = "bag") -> InputFormat:
    """The column layout of ``input_path`` in format ``fmt`` (reads the header or Parquet schema)."""
    if fmt not in FORMATS:
        raise ConversionError(input_path, f"unknown format '{fmt}'; formats: {', '.join(FORMATS)}", field="format")
    if libfm_fields not in ("bag", "positional"):
        raise ConversionError(input_path, f"libfm_fields must be bag or positional, got '{libfm_fields}'", field="libfm_fields")
    if libfm_fields != "bag" and fmt != "libfm":
        raise ConversionError(input_path, f"libfm_fields is for format libfm, not '{fmt}'", field="libfm_fields")
    if fmt not in SCHEMA_FORMATS and schema_path is not None:
        raise ConversionError(schema_path, f"a schema is only used with formats csv and parquet, not '{fmt}'", field="schema")
    if not input_path.is_file():
        problem = "not a file" if input_path.exists() else "no such file"
        raise ConversionError(input_path, f"cannot read input: {problem}")
    if fmt != "parquet":
        check_text_input(input_path)
    if fmt == "criteo":
        return _criteo()
    if fmt == "avazu":
        return _avazu(input_path)
    if fmt in ("libfm", "libffm"):
        return _libfm(fmt, input_path, libfm_fields)
    if schema_path is None:
        raise ConversionError(input_path, f"format '{fmt}' needs a schema YAML (--schema)", field="schema")
    if fmt == "parquet":
        return _parquet(input_path, schema_path)
    return _csv(input_path, schema_path)


def check_file(layout: InputFormat, path: Path, first: Path, schema_path: Path | None) -> None:
    """A further input file has the columns of the first one (header, or Parquet schema)."""
    if layout.text is not None and layout.text.header:
        names = read_header(path, layout.text)
        if names != read_header(first, layout.text):
            raise ConversionError(path, f"header differs from that of {first}", line=1)
    elif layout.text is None:
        schema = load_csv_schema(schema_path) if schema_path is not None else None
        if schema is not None:
            _check_parquet_types(schema, parquet_schema(path), schema_path or path, path)


def _criteo() -> InputFormat:
    names = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
    return InputFormat(
        "criteo",
        TextFormat("\t", header=False, quoting=False, null_values=("",)),
        names,
        "label",
        dense=list(CRITEO_DENSE),
        sparse=[SparseSource(n, n) for n in CRITEO_SPARSE],
    )


def _avazu(path: Path) -> InputFormat:
    text = TextFormat(",", header=True, quoting=False, null_values=("",))
    names = read_header(path, text)
    for required in ("click", "hour"):
        if required not in names:
            raise ConversionError(path, "required Avazu column missing from the header", line=1, field=required)
    sparse: list[SparseSource] = []
    for name in names:
        if name == "hour":
            sparse += [SparseSource("hour_of_day", name, "hour_of_day"), SparseSource("weekday", name, "weekday")]
        elif name not in ("id", "click"):
            problem = field_name_problem(name)
            if problem:
                raise ConversionError(path, f"column name {problem}", line=1, field=name)
            sparse.append(SparseSource(name, name))
    taken = {s.name for s in sparse if s.column != "hour"}
    for derived in ("hour_of_day", "weekday"):
        if derived in taken:
            raise ConversionError(path, "column name clashes with a field derived from 'hour'", line=1, field=derived)
    return InputFormat("avazu", text, names, "click", sparse=sparse)


def _schema_sparse(schema: CsvSchema) -> list[SparseSource]:
    return [SparseSource(n, n, "multi", schema.multi_valued[n]) if n in schema.multi_valued else SparseSource(n, n) for n in schema.sparse_order()]


def _csv(path: Path, schema_path: Path) -> InputFormat:
    schema = load_csv_schema(schema_path)
    text = TextFormat(schema.delimiter, header=schema.header, quoting=True)
    names = read_header(path, text) if schema.header else list(schema.columns or [])
    check_columns(schema, names, schema_path, path)
    return InputFormat("csv", text, names, schema.label, dense=list(schema.dense), sparse=_schema_sparse(schema), transforms=schema.transform_specs())


def _parquet(path: Path, schema_path: Path) -> InputFormat:
    schema = load_csv_schema(schema_path)
    if schema.columns is not None:
        raise ConversionError(schema_path, "not used with Parquet input (names come from the Parquet schema)", field="columns")
    _check_parquet_types(schema, parquet_schema(path), schema_path, path)
    used = [n for n, role in schema.roles().items() if role != "drop"]
    return InputFormat(
        "parquet", None, used, schema.label, dense=list(schema.dense), sparse=_schema_sparse(schema), transforms=schema.transform_specs()
    )


def _check_parquet_types(schema: CsvSchema, arrow: pa.Schema, schema_path: Path, path: Path) -> None:
    check_columns(schema, arrow.names, schema_path, path, source="Parquet schema")
    for name, role in schema.roles().items():
        if role == "drop":
            continue
        kind = role if role != "sparse" or name not in schema.multi_valued else "multi_valued"
        problem = type_problem(kind, arrow.field(name).type, schema.multi_valued.get(name))
        if problem:
            raise ConversionError(path, f"{problem} (listed under '{role}' in {schema_path})", field=name)


def with_time_column(layout: InputFormat, column: str, numeric: bool, path: Path) -> InputFormat:
    """``layout`` reading the time column ``column`` too (for a split by time)."""
    if layout.name in ("libfm", "libffm"):
        raise ConversionError(path, "libFM lines have no columns; a split by time needs a column", field="time_column")
    names = layout.columns
    arrow = parquet_schema(path) if layout.text is None else None
    available = arrow.names if arrow is not None else names
    if arrow is not None and column in available:
        t = value_type(arrow.field(column).type)
        ok = is_text(t) or (is_number(t) if numeric else pa.types.is_timestamp(t) or pa.types.is_date(t))
        if not ok:
            want = "numbers" if numeric else "timestamps, dates or ISO 8601 strings"
            raise ConversionError(path, f"time column holds {t}; with these cut points it must hold {want}", field=column)
    if column in available and column not in names:
        names = [*names, column]
    elif column not in names:
        raise ConversionError(path, f"time column not among the columns: {', '.join(names)}", field=column)
    return replace(layout, columns=names, time_column=column, time_numeric=numeric)
