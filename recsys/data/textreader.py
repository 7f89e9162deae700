"""Streaming reader of delimited text with exact line numbers, on pyarrow's C++ CSV parser.

Every column is read as a string (empty -> null); the converters validate values
vectorised. Rows with the wrong number of columns are dropped by the parser and reported
with their physical line; the lines of the other rows are reconstructed from them. The
parser runs serially (that is what makes its line numbers exact) in a background thread,
so parsing overlaps the caller's processing of the previous chunk.
"""

from __future__ import annotations

import csv as pycsv
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from recsys.data.errors import ConversionError, RaggedRow

_DONE = object()


@dataclass(frozen=True)
class TextFormat:
    """How to split a text file into columns."""

    delimiter: str
    header: bool
    quoting: bool = True


@dataclass
class LineChunk:
    """Rows of a chunk as strings, their 1-based line numbers, and ragged rows up to its end."""

    table: pa.Table
    lines: np.ndarray
    ragged: list[RaggedRow]


def read_header(path: Path, fmt: TextFormat) -> list[str]:
    """Column names from the first line of ``path``."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            first = f.readline()
    except OSError as exc:
        raise ConversionError(path, f"cannot read input: {exc.strerror or exc}") from exc
    if not first.strip():
        raise ConversionError(path, "empty input: no header line", line=1)
    quoting = pycsv.QUOTE_MINIMAL if fmt.quoting else pycsv.QUOTE_NONE
    names = next(pycsv.reader([first.rstrip("\r\n")], delimiter=fmt.delimiter, quoting=quoting))
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConversionError(path, "duplicate column name in header", line=1, field=name)
        seen.add(name)
    return names


def _open_input(path: Path) -> pa.NativeFile:
    try:
        return pa.OSFile(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise ConversionError(path, f"cannot read input: {exc}") from exc


class _Lines:
    """Reconstructs physical line numbers of kept rows from the dropped (ragged) lines.

    The parser thread appends dropped rows (``drop``) while the consumer assigns lines.
    """

    def __init__(self, first_line: int) -> None:
        self.next_line = first_line
        self._dropped: list[RaggedRow] = []
        self._lock = threading.Lock()

    def drop(self, row: RaggedRow) -> None:
        with self._lock:
            self._dropped.append(row)

    def assign(self, n: int) -> tuple[np.ndarray, list[RaggedRow]]:
        """Lines of the next ``n`` kept rows, and the dropped rows up to the last of them."""
        with self._lock:
            pending = sorted(self._dropped, key=lambda r: r.line)
        d = np.array([r.line for r in pending], dtype=np.int64)
        j = np.arange(n, dtype=np.int64)
        shift = np.searchsorted(d - self.next_line - np.arange(len(d)), j, side="right")
        lines = self.next_line + j + shift
        end = int(lines[-1]) + 1 if n else self.next_line
        done = [r for r in pending if r.line < end]
        with self._lock:
            self._dropped = [r for r in self._dropped if r.line >= end]
        self.next_line = end
        return lines, done

    def rest(self) -> list[RaggedRow]:
        with self._lock:
            return sorted(self._dropped, key=lambda r: r.line)


def _put(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put unless stopped; False when the consumer has gone."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _producer(reader: pacsv.CSVStreamingReader, chunk_rows: int, out: queue.Queue, stop: threading.Event) -> None:
    """Parse and gather batches into tables of at least ``chunk_rows`` rows."""
    try:
        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= chunk_rows:
                if not _put(out, pa.Table.from_batches(pending).combine_chunks(), stop):
                    return
                pending, rows = [], 0
        if pending:
            _put(out, pa.Table.from_batches(pending).combine_chunks(), stop)
        _put(out, _DONE, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
        _put(out, exc, stop)


def read_chunks(
    path: Path,
    fmt: TextFormat,
    names: list[str],
    chunk_rows: int,
    *,
    block_size: int = 1 << 20,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[LineChunk]:
    """Yield chunks of about ``chunk_rows`` rows (all columns as strings) in file order."""
    source = _open_input(path)
    ragged_rows = _Lines(2 if fmt.header else 1)
    expected = len(names)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        ragged_rows.drop(RaggedRow(int(row.number or 0), expected, row.actual_columns))
        return "skip"

    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=1 if fmt.header else 0, block_size=block_size, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=fmt.delimiter,
                quote_char='"' if fmt.quoting else False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True, check_utf8=False
            ),
        )
    except pa.ArrowInvalid as exc:
        source.close()
        if "Empty CSV file" in str(exc):
            raise ConversionError(path, "empty input: no data rows") from exc
        raise ConversionError(path, f"cannot parse: {exc}") from exc
    yield from _consume(path, reader, source, ragged_rows, chunk_rows, on_bytes)


def _consume(
    path: Path,
    reader: pacsv.CSVStreamingReader,
    source: pa.NativeFile,
    lines: _Lines,
    chunk_rows: int,
    on_bytes: Callable[[int], None] | None,
) -> Iterator[LineChunk]:
    tables: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    thread = threading.Thread(target=_producer, args=(reader, chunk_rows, tables, stop), daemon=True)
    thread.start()
    try:
        while True:
            item = tables.get()
            if isinstance(item, BaseException):
                raise ConversionError(path, f"cannot parse: {item}") from item
            if item is _DONE:
                break
            line_numbers, ragged = lines.assign(item.num_rows)
            if on_bytes is not None:
                on_bytes(source.tell())
            yield LineChunk(item, line_numbers, ragged)
        rest = lines.rest()
        if rest:
            yield LineChunk(pa.Table.from_batches([], reader.schema), np.zeros(0, np.int64), rest)
    finally:
        stop.set()
        thread.join()
        source.close()
