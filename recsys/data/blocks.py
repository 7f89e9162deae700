"""A plain text file cut into the blocks pyarrow's streaming CSV reader parses, for parsing them in parallel.

The streaming reader (``use_threads=False``: exact line numbers) reads ``block_size`` bytes at a
time from where it starts and parses, per read, the lines that end in it: block ``k`` ends after
the last newline of bytes ``[start + k * B, start + (k + 1) * B)`` (the last block at the end of
the file). ``MappedText.blocks`` finds those ends in a memory map (searching back from each read's
end, 64 KiB at a time: Python's ``mmap.rfind`` touched a third of the file's pages), so each
block can be parsed on its own (``pyarrow.csv.read_csv`` releases the GIL) and the results, taken
in file order, are the streaming reader's batches row for row. A file with a carriage return
anywhere is not cut (pyarrow ends lines at a lone ``\\r`` too, and where it then cuts a block is its
own business): ``MappedText.open`` gives ``None`` and the caller reads it serially.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa


@dataclass(frozen=True)
class Block:
    """Bytes ``start`` to ``end`` of the file; ``end`` is None when read ``index`` holds no newline
    (a line longer than the block: the streaming reader stops there, see ``recsys.data.textreader``)."""

    index: int
    start: int
    end: int | None


_WINDOW = 64 << 10  # bytes searched back at a time for a block's last newline


class MappedText:
    """A plain file mapped by Arrow, handing out blocks without a copy (one mapping: its pages are counted once)."""

    def __init__(self, path: Path, size: int, data: pa.MemoryMappedFile) -> None:
        self.path, self._data, self.size = path, data, size
        self._whole = data.read_buffer(size)  # zero-copy: a view of the map

    @classmethod
    def open(cls, path: Path) -> "MappedText | None":
        """The mapped file, or None: empty, not mappable, or with a carriage return."""
        try:
            with open(path, "rb") as f:
                search = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not a regular file, empty (ValueError), no permission
            return None
        with search:  # unmapped after the search (the page cache keeps the pages)
            size, carriage_return = len(search), search.find(b"\r") >= 0
        if carriage_return:
            return None
        try:
            data = pa.memory_map(str(path))
        except (OSError, pa.ArrowException):
            return None
        return cls(path, size, data)

    def blocks(self, start: int, block_size: int) -> Iterator[Block]:
        """The streaming reader's blocks from byte ``start`` on (one with ``end`` None ends them)."""
        index, begin, read = 0, start, start
        while begin < self.size:
            read_end = read + block_size
            if read_end >= self.size:
                yield Block(index, begin, self.size)
                return
            newline = self._last_newline(read, read_end)
            if newline < begin:  # no line ends in this read
                yield Block(index, begin, None)
                return
            yield Block(index, begin, newline + 1)
            index, begin, read = index + 1, newline + 1, read_end

    def _last_newline(self, lo: int, hi: int) -> int:
        """The offset of the last newline in bytes ``[lo, hi)``, or -1 (searched back a window at a time)."""
        with memoryview(self._whole) as view:
            while hi > lo:
                start = max(lo, hi - _WINDOW)
                at = bytes(view[start:hi]).rfind(b"\n")
                if at >= 0:
                    return start + at
                hi = start
        return -1

    def buffer(self, block: Block, lead: int = 0) -> pa.Buffer:
        """The bytes of ``block`` and the ``lead`` bytes before it (a view of the map)."""
        assert block.end is not None
        return self._whole.slice(block.start - lead, block.end - block.start + lead)

    def bom_at(self, offset: int) -> bool:
        """Whether the bytes at ``offset`` are a UTF-8 byte order mark."""
        with memoryview(self._whole) as view:
            return bytes(view[offset : offset + 3]) == b"\xef\xbb\xbf"

    def close(self) -> None:
        self._whole = None
        with contextlib.suppress(BufferError):  # a buffer still alive keeps the map until it goes
            self._data.close()

    def __enter__(self) -> "MappedText":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
