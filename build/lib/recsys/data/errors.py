"""Conversion errors and bad-row bookkeeping shared by the converters.

A bad row is found by a vectorised check that yields an ``Issue``: a boolean mask over the
rows of a chunk, a reason key (as counted in ``dataset.json``'s ``bad_rows_by_reason``), the
field it concerns and, for messages, the offending raw values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from recsys.data.excerpt import excerpt

BadRowMode = Literal["error", "skip"]


class ConversionError(ValueError):
    """Raw data (or a schema) that cannot be converted; names the file, line (or row group and
    row, for Parquet input) and field."""

    def __init__(
        self,
        file: str | Path,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        row_group: int | None = None,
        row: int | None = None,
    ) -> None:
        self.file = str(file)
        self.line = line
        self.field = field
        self.row_group = row_group
        self.row = row
        self.reason = message
        where = self.file
        if line is not None:
            where += f", line {line}"
        if row_group is not None:
            where += f", row group {row_group}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


@dataclass
class Issue:
    """Rows of a chunk that fail one check."""

    mask: np.ndarray
    reason: str
    field: str | None
    message: str
    values: pa.Array | None = None

    def describe(self, row: int) -> str:
        """The message for one offending row, with its raw value when known."""
        if self.values is None:
            return self.message
        if not self.message:  # the values are the messages
            return str(self.values[row].as_py())
        value = self.values[row]
        raw = value.cast(pa.binary()).as_py() if pa.types.is_string(value.type) or pa.types.is_large_string(value.type) else value.as_py()
        return f"{self.message} {excerpt(raw) if isinstance(raw, (bytes, str)) else repr(raw)}"


@dataclass(frozen=True)
class RaggedRow:
    """A line the CSV parser dropped: the wrong number of columns, or too long to parse."""

    line: int
    expected: int
    actual: int
    reason: str = "wrong_column_count"
    message: str | None = None  # default: "expected N columns, found M"


@dataclass
class BadRowLog:
    """Raises on the first bad row (mode ``error``) or counts dropped rows by reason (``skip``)."""

    path: Path
    mode: BadRowMode
    counts: dict[str, int] = field(default_factory=dict)
    row_group_starts: np.ndarray | None = None  # Parquet input: first row (1-based) of each row group

    def at(self, path: Path, row_group_starts: np.ndarray | None = None) -> None:
        """Report later rows as of ``path`` (lines; or rows by row group when ``row_group_starts``)."""
        self.path = path
        self.row_group_starts = row_group_starts

    def error(self, message: str, line: int, field: str | None) -> ConversionError:
        """The error for ``line`` of the current file (a row, with its row group, for Parquet)."""
        if self.row_group_starts is None:
            return ConversionError(self.path, message, line=line, field=field)
        group = int(np.searchsorted(self.row_group_starts, line, side="right")) - 1
        return ConversionError(self.path, message, row_group=group, row=line, field=field)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def ragged(self, rows: list[RaggedRow]) -> None:
        """Record rows that the parser already dropped."""
        if not rows:
            return
        if self.mode == "error":
            self.raise_ragged(min(rows, key=lambda r: r.line))
        for row in rows:
            self.counts[row.reason] = self.counts.get(row.reason, 0) + 1

    def raise_ragged(self, row: RaggedRow) -> None:
        message = row.message or f"expected {row.expected} columns, found {row.actual}"
        raise ConversionError(self.path, message, line=row.line, field="(row)")

    def resolve(self, issues: list[Issue], lines: np.ndarray, ragged: list[RaggedRow]) -> np.ndarray | None:
        """Rows to keep (``None``: all), after raising or counting.

        ``ragged`` are the parser-dropped rows up to the end of this chunk; in ``error`` mode
        the first bad row by line number, among both kinds, is raised.
        """
        issues = [i for i in issues if i.mask.any()]
        if self.mode == "error":
            self._raise_first(issues, lines, ragged)
        self.ragged(ragged)
        if not issues:
            return None
        bad = np.zeros(len(lines), dtype=bool)
        for issue in issues:
            new = issue.mask & ~bad
            self.counts[issue.reason] = self.counts.get(issue.reason, 0) + int(new.sum())
            bad |= issue.mask
        return ~bad

    def _raise_first(self, issues: list[Issue], lines: np.ndarray, ragged: list[RaggedRow]) -> None:
        first_ragged = min(ragged, key=lambda r: r.line) if ragged else None
        best: tuple[int, Issue, int] | None = None
        for issue in issues:
            row = int(np.argmax(issue.mask))
            if best is None or lines[row] < best[0]:
                best = (int(lines[row]), issue, row)
        if first_ragged is not None and (best is None or first_ragged.line < best[0]):
            self.raise_ragged(first_ragged)
        if best is not None:
            line, issue, row = best
            raise self.error(issue.describe(row), line, issue.field)
