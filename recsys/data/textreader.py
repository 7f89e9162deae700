"""Streaming reader of delimited text with exact line numbers, on pyarrow's C++ CSV parser.

Every column is read as a string (empty -> null); the converters validate values
vectorised. Rows with the wrong number of columns are dropped by the parser and reported
with their physical line; the lines of the other rows are reconstructed from them. The
parser runs serially (that is what makes its line numbers exact) in a background thread,
so parsing overlaps the caller's processing of the previous chunk (handed over in pieces, so
the caller starts early). With ``parse_threads``, a plain unquoted file is parsed several blocks
at a time, cut where the serial parser cuts them (``recsys.data.blocks``): the same rows, lines
and recoveries, taken in order.

A line longer than the parser's block grows the block (parsing restarts at that line); a
line longer than ``MAX_ROW_BYTES``, or a ragged line that is not UTF-8, is dropped like a
ragged row (a bad row: named in ``error`` mode, counted and skipped in ``skip`` mode).
UTF-16 and binary input is refused up front (``recsys.data.textcheck``). Compressed files
(``.gz``, ``.bz2``, ``.zst``) are decompressed as they are read; offsets are then those of the
decompressed text (``recsys.data.inputs.open_at``).
"""

from __future__ import annotations

import contextlib
import csv as pycsv
import os
import queue
import re
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from recsys.data.blocks import Block, MappedText
from recsys.data.errors import ConversionError, RaggedRow
from recsys.data.excerpt import safe_message
from recsys.data.fastrows import FastLayout, FastRows, RowBuffer
from recsys.data.inputs import codec_of, open_stream, read_first_line, read_range
from recsys.data.linescan import LineIndex
from recsys.data.textcheck import check_text_input

_DONE = object()
MAX_ROW_BYTES = 16 << 20  # a longer line is a bad row (``line_too_long``): bounded memory
# blocks of a plain file parsed at once (``recsys.data.blocks``); 0: the streaming reader alone. On 2 cores the
# consumer's two threads keep both busy and parsing on two more only added CPU (docs/results/convert_speed.md)
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
PARSE_THREADS = 2 if _CORES >= 4 else 0


@dataclass(frozen=True)
class TextFormat:
    """How to split a text file into columns."""

    delimiter: str
    header: bool
    quoting: bool = True
    null_values: tuple[str, ...] | None = None  # strings read as missing (None: Arrow's list: "", "NA", "null", ...)


@dataclass
class LineChunk:
    """Rows of a chunk as strings (or, from the fast path, parsed: ``FastRows``), their 1-based line numbers,
    and ragged rows up to its end; ``ends_chunk`` false: a piece of a chunk, more of it follows (see ``read_chunks``)."""

    table: pa.Table | FastRows
    lines: np.ndarray
    ragged: list[RaggedRow]
    ends_chunk: bool = True


def read_header(path: Path, fmt: TextFormat) -> list[str]:
    """Column names from the first line of ``path``."""
    check_text_input(path)
    first = read_first_line(path).decode("utf-8-sig", errors="replace")
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

    def forget(self, rows: list[RaggedRow]) -> None:
        """Remove rows dropped by a parse that is redone (they are dropped again)."""
        if rows:
            with self._lock:
                self._dropped = [r for r in self._dropped if r not in rows]

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


@dataclass
class _Segment:
    """A byte range of the input parsed by one pyarrow reader; ``line`` is the physical line
    at ``start``, ``skip`` the lines to skip there (the header), ``end`` None: to the end."""

    start: int
    line: int
    end: int | None = None
    skip: int = 0


def _quiet_undecodable(unraisable: "sys.UnraisableHookArgs") -> None:
    """Hide what pyarrow reports on stderr when it cannot hand a non-UTF-8 ragged row to our
    handler: the parse error that follows is recovered from and named (see ``_recover``)."""
    if unraisable.exc_type is UnicodeDecodeError and getattr(unraisable.object, "__qualname__", "") in _HANDLERS:
        return
    _PREVIOUS_HOOK(unraisable)


_PREVIOUS_HOOK = sys.unraisablehook
_STRADDLING = "straddling object straddles two block boundaries (try to increase block size?)"  # pyarrow's words
_HANDLERS = ("_Parser._open.<locals>.on_invalid", "_Parser._parse_block.<locals>.on_invalid")


class _Parser:
    """Parses the input as a sequence of segments. Normally one segment is the whole file; a
    row pyarrow cannot parse in place ends the segment there and parsing restarts at that
    row's line: with a larger block for a line longer than the block (up to ``max_row_bytes``),
    or past the row, dropped as a bad row, for a longer line or a ragged line that is not UTF-8."""

    def __init__(
        self,
        path: Path,
        fmt: TextFormat,
        names: list[str],
        lines: _Lines,
        block_size: int,
        max_row_bytes: int,
        threads: int = 0,
        fast: FastLayout | None = None,
    ) -> None:
        self.path, self.fmt, self.names, self.lines = path, fmt, names, lines
        self.block_size, self.max_row_bytes = block_size, max_row_bytes
        self.index = LineIndex(path)
        self.position = 0  # bytes of the input parsed so far (for progress)
        self.compressed = codec_of(path) is not None
        self.threads = threads if not (self.compressed or fmt.quoting) else 0  # quoted text: always the streaming reader
        # the fast path (``recsys.data.fastrows``) parses the blocks of a plain unquoted file in order on this thread
        self.rows = None if fast is None or self.compressed or fmt.quoting or len(names) != len(fast.roles) else RowBuffer(fast)
        self._raw: pa.NativeFile | None = None  # the file under a compressed stream

    def _options(self, skip: int, block_size: int, on_invalid: Callable[[pacsv.InvalidRow], str]) -> dict[str, object]:
        return dict(
            read_options=pacsv.ReadOptions(column_names=self.names, skip_rows=skip, block_size=block_size, use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=self.fmt.delimiter,
                quote_char='"' if self.fmt.quoting else False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in self.names},
                strings_can_be_null=True,
                check_utf8=False,
                **({} if self.fmt.null_values is None else {"null_values": list(self.fmt.null_values)}),
            ),
        )

    def _open(self, seg: _Segment, dropped: list[RaggedRow]) -> tuple[pacsv.CSVStreamingReader, pa.NativeFile]:
        expected = len(self.names)

        def on_invalid(row: pacsv.InvalidRow) -> str:
            ragged = RaggedRow(seg.line - 1 + int(row.number or 0), expected, row.actual_columns)
            dropped.append(ragged)
            self.lines.drop(ragged)
            return "skip"

        if seg.end is None:
            source, self._raw = open_stream(self.path, seg.start)
        else:
            source = pa.BufferReader(read_range(self.path, seg.start, seg.end))
        try:
            reader = pacsv.open_csv(source, **self._options(seg.skip, self.block_size, on_invalid))  # type: ignore[arg-type]
        except BaseException:
            source.close()
            raise
        return reader, source

    def batches(self, stop: threading.Event) -> Iterator[pa.RecordBatch | int]:
        """Every row of the input in file order (ragged and dropped rows go to ``lines``)."""
        mapped = MappedText.open(self.path) if self.threads or self.rows is not None else None
        try:
            yield from self._segments(stop, mapped)
        finally:
            if mapped is not None:
                mapped.close()

    def _segments(self, stop: threading.Event, mapped: MappedText | None) -> Iterator[pa.RecordBatch | int]:
        pending = [_Segment(0, 1, None, 1 if self.fmt.header else 0)]
        while pending and not stop.is_set():
            seg = pending.pop(0)
            if seg.end is not None and seg.end <= seg.start or seg.end is None and seg.start and seg.start >= self.index.size:
                continue
            if mapped is not None and seg.end is None:  # to the end of a plain file: its blocks in parallel
                pending[:0] = yield from self._blocks(seg, mapped, stop)
                continue
            rows, dropped = 0, []
            try:
                reader, source = self._open(seg, dropped)
                with contextlib.closing(source):
                    for batch in reader:
                        rows += batch.num_rows
                        self.position = self.raw_position(source, seg)
                        yield batch
            except pa.ArrowInvalid as exc:
                if rows == 0 and not dropped and "Empty CSV file" in str(exc):
                    raise ConversionError(self.path, "empty input: no data rows") from exc
                pending[:0] = self._recover(exc, seg, self._next_line(seg, rows, dropped), dropped)

    def _blocks(self, seg: _Segment, mapped: MappedText, stop: threading.Event) -> Generator[pa.RecordBatch | int, None, list[_Segment]]:
        """``seg`` (to the end of the file) as the streaming reader parses it, block by block, ``threads`` blocks
        at a time; returns the segments that continue after a block it could not parse (as ``batches`` does).
        With the fast path, block by block on this thread: a block it parses is yielded as its number of rows
        (held by ``self.rows``), one it declines is parsed by pyarrow."""
        line, rows, dropped = seg.line, 0, []  # the first line of the next block; rows and ragged rows delivered
        blocks = mapped.blocks(seg.start, self.block_size)
        inline = self.rows is not None
        with ThreadPoolExecutor(max(1, self.threads), thread_name_prefix="csv-block") as pool:
            jobs: deque[tuple[Block, Future | None]] = deque()

            def submit() -> None:
                block = next(blocks, None)
                if block is not None:
                    jobs.append(
                        (block, None if block.end is None or inline else pool.submit(self._parse_block, *self._block_args(mapped, block, seg)))
                    )

            try:
                for _ in range(1 if inline else self.threads + 2):
                    submit()
                while jobs and not stop.is_set():
                    block, job = jobs.popleft()
                    here = _Segment(block.start, line, None, seg.skip if block.index == 0 else 0)
                    if inline and block.end is not None:
                        fast = self._parse_fast(mapped, block, here.skip)
                        if fast is not None:
                            submit()
                            line, rows, self.position = line + fast, rows + fast, block.end
                            yield fast
                            continue
                        job = pool.submit(self._parse_block, *self._block_args(mapped, block, seg))
                    table, numbers, exc = (None, [], pa.ArrowInvalid(_STRADDLING)) if job is None else job.result()  # None: no line ends in the read
                    ragged = [RaggedRow(here.line - 1 + n, len(self.names), actual) for n, actual in numbers]
                    if exc is not None:  # recover as from the streaming reader failing on this block (from the line it would restart at)
                        return self._recover(exc, here, self._next_line(seg, rows, dropped + ragged), dropped + ragged)
                    assert table is not None
                    submit()
                    for row in ragged:
                        self.lines.drop(row)
                    dropped += ragged
                    line += here.skip + table.num_rows + len(ragged)
                    rows += table.num_rows
                    self.position = block.end
                    yield from table.to_batches()
            finally:
                for _, job in jobs:
                    if job is not None:
                        job.cancel()
        return []

    def _block_args(self, mapped: MappedText, block: Block, seg: _Segment) -> tuple[pa.Buffer, int, int]:
        """``_parse_block``'s arguments for ``block``: its bytes, the lines to skip, the lead."""
        lead = int(block.index > 0 and mapped.bom_at(block.start))  # the reader strips a BOM at its start only
        return mapped.buffer(block, lead), seg.skip if block.index == 0 else 0, lead

    def _parse_fast(self, mapped: MappedText, block: Block, skip: int) -> int | None:
        """The rows of ``block`` parsed into ``self.rows`` by the fast path, or None (declined: no rows added)."""
        assert self.rows is not None
        return None if skip else self.rows.parse(mapped.buffer(block))

    def _parse_block(self, data: pa.Buffer, skip: int, lead: int) -> tuple[pa.Table | None, list[tuple[int, int]], Exception | None]:
        """Rows of one block; the (row number in the block, columns) of each ragged row; the parse error if any.
        ``lead``: the block starts with the newline before it (an empty line: one row of nulls, taken off)."""
        numbers: list[tuple[int, int]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            numbers.append((int(row.number or 0) - lead, row.actual_columns))
            return "skip"

        try:  # one block of the reader: a block size past the data
            table = pacsv.read_csv(pa.BufferReader(data), **self._options(skip, data.size + 1, on_invalid))  # type: ignore[arg-type]
        except pa.ArrowInvalid as exc:  # its row numbers counted from the block (the lead line taken off)
            return None, numbers, pa.ArrowInvalid(re.sub(r"Row #(\d+)", lambda m: f"Row #{int(m.group(1)) - lead}", str(exc))) if lead else exc
        return table.slice(lead) if lead else table, numbers, None

    def raw_position(self, source: pa.NativeFile, seg: _Segment) -> int:
        """Bytes of the file on disk read so far (a compressed file: its compressed bytes)."""
        if self.compressed:
            return self._raw.tell() if seg.end is None and self._raw is not None and not self._raw.closed else self.position
        return source.tell() + (seg.start if seg.end is not None else 0)

    def _next_line(self, seg: _Segment, rows: int, dropped: list[RaggedRow]) -> int:
        """The first line not yet delivered: after ``rows`` kept lines and the dropped ones among them."""
        line = seg.line + seg.skip + rows
        for row in sorted(dropped, key=lambda r: r.line):
            if row.line < line:
                line += 1
        return line

    def _recover(self, exc: pa.ArrowInvalid, seg: _Segment, line: int, dropped: list[RaggedRow]) -> list[_Segment]:
        """The segments that continue parsing after ``exc`` (raised at ``line`` or after it)."""
        self.lines.forget([r for r in dropped if r.line >= line])  # reported again when re-read
        start = self.index.offset(line)
        message = str(exc)
        bad_row = re.search(r"Row #(\d+): Expected (\d+) columns, got (\d+)", message)
        if "straddling" in message:
            long = self.index.long_line(line, self.block_size)
            if long is None:
                raise ConversionError(self.path, f"cannot parse: {safe_message(message)}", line=line) from exc
            if long.length <= self.max_row_bytes:
                self.block_size = max(2 * self.block_size, 1 << long.length.bit_length())
                return [_Segment(start, line, seg.end)]
            mib = self.max_row_bytes / (1 << 20)
            text = f"line of {long.length:,} bytes, longer than the {mib:g} MiB limit of one row"
            skipped, after = RaggedRow(long.line, len(self.names), 0, "line_too_long", text), long.end
        elif bad_row is not None and seg.line - 1 + int(bad_row.group(1)) >= line:  # a ragged row pyarrow could not hand over: not UTF-8
            number = seg.line - 1 + int(bad_row.group(1))
            expected, actual = int(bad_row.group(2)), int(bad_row.group(3))
            text = f"expected {expected} columns, found {actual} (and the line is not valid UTF-8)"
            skipped, after = RaggedRow(number, expected, actual, message=text), self.index.offset(number + 1)
        else:
            raise ConversionError(self.path, f"cannot parse: {safe_message(message)}", line=line) from exc
        self.lines.drop(skipped)
        before = _Segment(start, line, self.index.offset(skipped.line))
        return [before, _Segment(after, skipped.line + 1, seg.end)]


def _producer(parser: _Parser, chunk_rows: int, piece_rows: int, out: queue.Queue, stop: threading.Event, schema: pa.Schema) -> None:
    """Parse and gather batches into tables of at least ``chunk_rows`` rows (chunked, not copied into one
    array per column: the categorical columns are hashed chunk by chunk, the others gathered by ``as_array``),
    handed over in pieces of at least ``piece_rows`` rows, the last piece of each chunk marked. Rows of the
    fast path (``int``: that many rows in ``parser.rows``) and of pyarrow go in separate pieces."""

    def piece(pending: list[pa.RecordBatch | int]) -> pa.Table | FastRows:
        if pending and isinstance(pending[0], int):
            assert parser.rows is not None
            return parser.rows.take()
        return pa.Table.from_batches(pending, schema)

    try:
        pending: list[pa.RecordBatch | int] = []
        rows = in_chunk = 0
        for batch in parser.batches(stop):
            if pending and isinstance(batch, int) != isinstance(pending[0], int):  # a piece holds rows of one kind
                if not _put(out, (piece(pending), parser.position, False), stop):
                    return
                pending, rows = [], 0
            n = batch if isinstance(batch, int) else batch.num_rows
            pending.append(batch)
            rows += n
            in_chunk += n
            if rows >= piece_rows or in_chunk >= chunk_rows:
                if not _put(out, (piece(pending), parser.position, in_chunk >= chunk_rows), stop):
                    return
                pending, rows = [], 0
                in_chunk = 0 if in_chunk >= chunk_rows else in_chunk
        if pending or in_chunk:
            _put(out, (piece(pending), parser.position, True), stop)
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
    max_row_bytes: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    parse_threads: int | None = None,
    piece_rows: int | None = None,
    fast: FastLayout | None = None,
) -> Iterator[LineChunk]:
    """Yield chunks of about ``chunk_rows`` rows (all columns as strings) in file order.

    A line longer than ``block_size`` grows the block; one longer than ``max_row_bytes``
    (default ``MAX_ROW_BYTES``) is a bad row (``line_too_long``), reported with the ragged rows.
    A plain file without quoting is parsed ``parse_threads`` blocks at a time (the same chunks, rows and
    line numbers as the serial reader, ``parse_threads=0``; None: ``PARSE_THREADS``). ``piece_rows``: each chunk comes in pieces of
    at least that many rows (the consumer starts on the first rows sooner), ``ends_chunk`` on its last piece.
    ``fast``: the blocks of a plain unquoted file are parsed by the fast path (``recsys.data.fastrows``) where
    it can, in pieces of ``FastRows`` (the same chunks, rows and line numbers; declined blocks come as strings).
    """
    check_text_input(path)
    _open_input(path).close()
    if sys.unraisablehook is not _quiet_undecodable:
        global _PREVIOUS_HOOK
        _PREVIOUS_HOOK, sys.unraisablehook = sys.unraisablehook, _quiet_undecodable
    lines = _Lines(2 if fmt.header else 1)
    threads = PARSE_THREADS if parse_threads is None else parse_threads
    parser = _Parser(path, fmt, names, lines, block_size, MAX_ROW_BYTES if max_row_bytes is None else max_row_bytes, threads, fast)
    schema = pa.schema([(n, pa.string()) for n in names])
    yield from _consume(path, parser, lines, chunk_rows, min(chunk_rows, piece_rows or chunk_rows), on_bytes, schema)


def _consume(
    path: Path,
    parser: _Parser,
    lines: _Lines,
    chunk_rows: int,
    piece_rows: int,
    on_bytes: Callable[[int], None] | None,
    schema: pa.Schema,
) -> Iterator[LineChunk]:
    ahead = 1 if parser.rows is not None else 2  # chunks parsed ahead (the fast path keeps ahead with one: less memory held)
    tables: queue.Queue = queue.Queue(maxsize=ahead * -(-chunk_rows // piece_rows))
    stop = threading.Event()
    thread = threading.Thread(target=_producer, args=(parser, chunk_rows, piece_rows, tables, stop, schema), daemon=True)
    thread.start()
    try:
        while True:
            item = tables.get()
            if isinstance(item, ConversionError):
                raise item
            if isinstance(item, BaseException):
                raise ConversionError(path, f"cannot parse: {safe_message(str(item))}") from item
            if item is _DONE:
                break
            table, position, ends_chunk = item
            line_numbers, ragged = lines.assign(table.num_rows)
            if on_bytes is not None:
                on_bytes(position)
            yield LineChunk(table, line_numbers, ragged, ends_chunk)
        rest = lines.rest()
        if rest:
            yield LineChunk(pa.Table.from_batches([], schema), np.zeros(0, np.int64), rest)
    finally:
        stop.set()
        thread.join()
