"""Input files: ``--input`` patterns expanded in order, and transparent gzip/bz2/zstd decompression.

A pattern with ``*``, ``?`` or ``[`` is a glob; its matches are read in natural order
(``day_2`` before ``day_10``). Compression is chosen by the file's extension
(``.gz``, ``.bz2``, ``.zst``/``.zstd``) and undone by pyarrow's streaming codecs.
"""

from __future__ import annotations

import contextlib
import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from recsys.data.errors import ConversionError

CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
_GLOB_CHARS = ("*", "?", "[")


def _natural_key(path: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def expand_inputs(patterns: Sequence[str | Path], what: str = "--input") -> list[Path]:
    """Files named by ``patterns`` (paths or globs), in the given order; each must exist.

    A file named twice is refused (its rows would be read twice).
    """
    files: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if any(c in text for c in _GLOB_CHARS):
            matches = sorted(glob.glob(text), key=_natural_key)
            if not matches:
                raise ConversionError(text, f"{what}: the pattern matches no file")
            files += [Path(m) for m in matches]
            continue
        path = Path(text)
        if not path.is_file():
            problem = "not a file" if path.exists() else "no such file"
            raise ConversionError(path, f"cannot read input: {problem}")
        files.append(path)
    seen: set[Path] = set()
    for path in files:
        key = path.resolve()
        if key in seen:
            raise ConversionError(path, f"{what}: this file is named twice; its rows would be read twice")
        seen.add(key)
    if not files:
        raise ConversionError(what, "no input files given")
    return files


def codec_of(path: Path) -> str | None:
    """The compression codec implied by ``path``'s extension (``None``: plain)."""
    return CODECS.get(Path(path).suffix.lower())


@dataclass
class InputStream:
    """A decompressed byte stream and the raw file under it (whose position is the progress)."""

    stream: pa.NativeFile
    raw: pa.NativeFile

    def close(self) -> None:
        self.stream.close()
        if self.raw is not self.stream:
            self.raw.close()


def open_input(path: Path) -> InputStream:
    """Open ``path`` for reading, decompressing by its extension."""
    try:
        raw = pa.OSFile(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise ConversionError(path, f"cannot read input: {exc}") from exc
    codec = codec_of(path)
    if codec is None:
        return InputStream(raw, raw)
    return InputStream(pa.CompressedInputStream(raw, codec), raw)


def read_first_line(path: Path, limit: int = 1 << 20) -> bytes:
    """The first line of ``path`` (decompressed), without its line break; at most ``limit`` bytes."""
    source = open_input(path)
    data = b""
    try:
        while b"\n" not in data and len(data) < limit:
            block = source.stream.read(1 << 16)
            if not block:
                break
            data += block
    except (OSError, pa.ArrowException) as exc:
        raise ConversionError(path, f"cannot read input: {exc}") from exc
    finally:
        source.close()
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def count_lines(path: Path, skip_header: bool) -> int:
    """Data lines of a text file (decompressed); a last line without a line break counts."""
    source = open_input(path)
    lines, last = 0, b"\n"
    try:
        while True:
            block = source.stream.read(1 << 22)
            if not block:
                break
            lines += block.count(b"\n")
            last = block[-1:]
    except (OSError, pa.ArrowException) as exc:
        raise ConversionError(path, f"cannot read input: {exc}") from exc
    finally:
        source.close()
    lines += last != b"\n"
    return max(0, lines - int(skip_header))


def _skip(stream: pa.NativeFile, n: int) -> None:
    while n > 0:
        block = stream.read(min(n, 1 << 22))
        if not block:
            return
        n -= len(block)


def open_stream(path: Path, start: int = 0) -> tuple[pa.NativeFile, pa.NativeFile]:
    """``(stream, raw file)``: ``path`` decompressed, positioned at decompressed byte ``start``
    (a compressed file is read up to there: done only to restart after a bad row).

    A plain regular file is memory-mapped: the parser reads its pages in place instead of copying
    each block into fresh memory (a tenth of the conversion's page faults)."""
    if codec_of(path) is None and Path(path).is_file():
        with contextlib.suppress(OSError, pa.ArrowException):  # not mappable: read it
            mapped = pa.memory_map(str(path))
            mapped.seek(start)
            return mapped, mapped
    source = open_input(path)
    if source.stream is source.raw:
        source.raw.seek(start)
    else:
        _skip(source.stream, start)
    return source.stream, source.raw


def open_at(path: Path, start: int) -> pa.NativeFile:
    """``path`` decompressed, from decompressed byte ``start``."""
    return open_stream(path, start)[0]


def read_range(path: Path, start: int, end: int) -> bytes:
    """Decompressed bytes ``start`` to ``end`` of ``path``."""
    stream = open_at(path, start)
    try:
        return stream.read(end - start)
    finally:
        stream.close()


def decompressed_size(path: Path) -> int:
    """Bytes of ``path`` once decompressed (its size when plain)."""
    if codec_of(path) is None:
        return Path(path).stat().st_size
    stream, size = open_at(path, 0), 0
    try:
        while block := stream.read(1 << 22):
            size += len(block)
    finally:
        stream.close()
    return size
