"""The input formats: which columns are read, and how a chunk of strings becomes field values.

* ``criteo``: Criteo Kaggle TSV, no header: label, I1..I13 (integers), C1..C26 (hex strings).
* ``avazu``: CSV with header; ``click`` is the label, ``id`` is dropped, ``hour`` (YYMMDDHH)
  becomes the sparse fields ``hour_of_day`` ("0".."23") and ``weekday`` ("0".."6", Monday 0).
* ``libfm``: ``label idx:val ...``; labels -1/0/1 (-1 -> 0); one multi-valued weighted sparse
  field ``features`` (raw value = the idx string, weight = val).
* ``csv``: any delimited file described by a schema YAML (``recsys.data.schema``).

Blank lines are skipped (they are not bad rows); line numbers count them.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.errors import ConversionError, Issue
from recsys.data.parse import SparseValues, as_array, hash_multi, hash_single, parse_floats, parse_labels, slog1p
from recsys.data.schema import check_columns, field_name_problem, load_csv_schema
from recsys.data.sources import derive_hour, parse_libfm_lines
from recsys.data.textcheck import check_text_input
from recsys.data.textreader import TextFormat, read_header

FormatName = Literal["criteo", "avazu", "libfm", "csv"]
FORMATS: tuple[str, ...] = ("criteo", "avazu", "libfm", "csv")
SourceKind = Literal["single", "multi", "hour_of_day", "weekday", "libfm"]
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
        return self.kind in ("multi", "libfm")

    @property
    def weighted(self) -> bool:
        return self.kind == "libfm"


@dataclass
class ParsedChunk:
    """Field values of the rows of one chunk, in field order."""

    lines: np.ndarray
    label: np.ndarray
    dense: list[np.ndarray]
    sparse: list[SparseValues]

    def __len__(self) -> int:
        return len(self.lines)

    def take(self, keep: np.ndarray) -> "ParsedChunk":
        return ParsedChunk(
            self.lines[keep], self.label[keep], [d[keep] for d in self.dense], [s.take(keep) for s in self.sparse]
        )


@dataclass
class InputFormat:
    """Columns of one input file and their roles."""

    name: FormatName
    text: TextFormat
    columns: list[str]
    label: str
    dense: list[str] = field(default_factory=list)
    sparse: list[SparseSource] = field(default_factory=list)
    label_values: tuple[float, ...] = (0.0, 1.0)

    def parse(
        self, table: pa.Table, lines: np.ndarray, pool: Executor | None = None
    ) -> tuple[ParsedChunk, list[Issue]]:
        """Parse one chunk (columns in parallel on ``pool``); failing rows become issues."""
        table, lines = _drop_blank(table, lines)
        if self.name == "libfm":
            return _parse_libfm(self, table, lines)
        label_col = as_array(table.column(self.label))
        label, bad = parse_labels(label_col, self.label_values)
        issues = [Issue(bad, "bad_label", self.label, "label must be 0 or 1, found", label_col)]
        tasks: list[Callable[[], tuple[Any, Issue | None]]] = [partial(_dense, table, n) for n in self.dense]
        tasks += [partial(_sparse, table, src) for src in self.sparse]
        results = list(pool.map(_call, tasks) if pool is not None else map(_call, tasks))
        issues += [issue for _, issue in results if issue is not None]
        dense = [values for values, _ in results[: len(self.dense)]]
        sparse = [values for values, _ in results[len(self.dense) :]]
        return ParsedChunk(lines, label, dense, sparse), issues


def _call(task: Callable[[], tuple[Any, Issue | None]]) -> tuple[Any, Issue | None]:
    return task()


def _dense(table: pa.Table, name: str) -> tuple[np.ndarray, Issue]:
    col = as_array(table.column(name))
    values, bad = parse_floats(col)
    return slog1p(values), Issue(bad, "bad_dense", name, "non-numeric dense value", col)


def _sparse(table: pa.Table, src: SparseSource) -> tuple[SparseValues, Issue | None]:
    col = as_array(table.column(src.column))
    if src.kind == "multi":
        return hash_multi(col, src.separator or ""), None
    if src.kind in ("hour_of_day", "weekday"):
        values, bad = derive_hour(col, src.kind)
        if src.kind == "hour_of_day":
            return values, Issue(bad, "bad_hour", src.column, "hour must be YYMMDDHH, found", col)
        return values, None
    return hash_single(col), None


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
    text = pc.utf8_trim_whitespace(as_array(table.column(0)))
    keep = pc.not_equal(text, "")
    if not pc.all(keep).as_py():
        text, lines = text.filter(keep), lines[keep.to_numpy(zero_copy_only=False)]
    label_col, values, bad_token, first_bad = parse_libfm_lines(text)
    label, bad_label = parse_labels(label_col, fmt.label_values)
    issues = [
        Issue(bad_label, "bad_label", "label", "label must be -1, 0 or 1, found", label_col),
        Issue(bad_token, "bad_feature", LIBFM_FIELD, "feature must be idx:value with a numeric value, found", first_bad),
    ]
    return ParsedChunk(lines, label, [], [values]), issues


def open_format(fmt: str, input_path: Path, schema_path: Path | None) -> InputFormat:
    """The column layout of ``input_path`` in format ``fmt`` (reads the header if any)."""
    if fmt not in FORMATS:
        raise ConversionError(input_path, f"unknown format '{fmt}'; formats: {', '.join(FORMATS)}", field="format")
    if fmt != "csv" and schema_path is not None:
        raise ConversionError(schema_path, f"a schema is only used with format 'csv', not '{fmt}'", field="schema")
    if not input_path.is_file():
        problem = "not a file" if input_path.exists() else "no such file"
        raise ConversionError(input_path, f"cannot read input: {problem}")
    check_text_input(input_path)
    if fmt == "criteo":
        return _criteo()
    if fmt == "avazu":
        return _avazu(input_path)
    if fmt == "libfm":
        return InputFormat(
            "libfm", TextFormat("\x1f", header=False, quoting=False), ["line"], "label",
            sparse=[SparseSource(LIBFM_FIELD, "line", "libfm")], label_values=(-1.0, 0.0, 1.0),
        )
    if schema_path is None:
        raise ConversionError(input_path, "format 'csv' needs a schema YAML", field="schema")
    return _csv(input_path, schema_path)


def _criteo() -> InputFormat:
    names = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
    return InputFormat(
        "criteo", TextFormat("\t", header=False, quoting=False), names, "label",
        dense=list(CRITEO_DENSE), sparse=[SparseSource(n, n) for n in CRITEO_SPARSE],
    )


def _avazu(path: Path) -> InputFormat:
    text = TextFormat(",", header=True, quoting=False)
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


def _csv(path: Path, schema_path: Path) -> InputFormat:
    schema = load_csv_schema(schema_path)
    text = TextFormat(schema.delimiter, header=schema.header, quoting=True)
    names = read_header(path, text) if schema.header else list(schema.columns or [])
    check_columns(schema, names, schema_path, path)
    sparse = [
        SparseSource(n, n, "multi", schema.multi_valued[n]) if n in schema.multi_valued else SparseSource(n, n)
        for n in schema.sparse_order()
    ]
    return InputFormat("csv", text, names, schema.label, dense=list(schema.dense), sparse=sparse)
