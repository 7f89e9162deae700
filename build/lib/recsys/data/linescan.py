"""Byte offsets and lengths of physical lines of a file, found by scanning forward.

The text reader uses them only to recover from rows pyarrow cannot parse in place (a line
longer than its block, a ragged line that is not UTF-8): it restarts parsing at a line's
offset. Scans read 1 MiB at a time and continue from the last line found, so the whole
file is scanned at most about once however many recoveries there are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.inputs import decompressed_size, open_at

SCAN_BYTES = 1 << 20


@dataclass(frozen=True)
class LongLine:
    """A line longer than a limit: its number, first byte and the offset after its newline."""

    line: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


class LineIndex:
    """Offsets of the lines of ``path`` (``\\n``-terminated; line 1 starts at byte 0); of the
    decompressed text for a compressed file (``recsys.data.inputs``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._size: int | None = None
        self._known = (1, 0)  # (line, offset): the furthest line whose offset is known

    @property
    def size(self) -> int:
        """Bytes of the (decompressed) text; counted once, when first asked."""
        if self._size is None:
            self._size = decompressed_size(self.path)
        return self._size

    def offset(self, line: int) -> int:
        """The offset of the first byte of ``line`` (the file size past the last line)."""
        known, pos = self._known if line >= self._known[0] else (1, 0)
        with contextlib.closing(open_at(self.path, pos)) as f:
            while known < line:
                buf = f.read(SCAN_BYTES)
                if not buf:
                    self._size = pos
                    return pos
                newlines = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
                if known + len(newlines) >= line:
                    pos += int(newlines[line - known - 1]) + 1
                    known = line
                    break
                known, pos = known + len(newlines), pos + len(buf)
        self._known = (known, pos)
        return pos

    def long_line(self, line: int, limit: int) -> LongLine | None:
        """The first line from ``line`` on that is longer than ``limit`` bytes (with its newline)."""
        start = self.offset(line)
        number, pos = line, start
        with contextlib.closing(open_at(self.path, start)) as f:
            while True:
                buf = f.read(SCAN_BYTES)
                if not buf:
                    return LongLine(number, start, pos) if pos - start > limit else None
                ends = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10) + pos + 1
                starts = np.concatenate(([start], ends[:-1]))
                long = np.flatnonzero(ends - starts > limit)
                if len(long):
                    i = int(long[0])
                    return LongLine(number + i, int(starts[i]), int(ends[i]))
                if len(ends):
                    number, start = number + len(ends), int(ends[-1])
                pos += len(buf)
