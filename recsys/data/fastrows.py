"""The fast path for plain delimited text: rows parsed and hashed straight from the input bytes.

For a layout of a label, numeric dense columns and single-valued categorical columns, unquoted,
with only ``""`` read as missing (Criteo), ``recsys.data.fastparse`` (``recsys/data/fastparse.c``,
built by ``pip install``) parses a block of lines into the label, the dense values (float64, NaN for
missing) and the raw ids of the categorical values: what pyarrow's CSV reader and the converter's
checks give for those rows, without the string columns. A block it is not sure of (anything but
plain rows of ``0``/``1`` labels, integers and ASCII values) is declined whole, and the reader parses
it with pyarrow as before, with the same errors and recoveries. Without the compiled module (a
source checkout never built) there is no fast path: one warning is logged, the reader takes pyarrow's.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

try:
    from recsys.data import fastparse as _fastparse
except ImportError as _exc:  # a source checkout never built
    _fastparse, _IMPORT_ERROR = None, str(_exc)
else:
    _IMPORT_ERROR = ""

_warned = threading.Event()
_log = logging.getLogger(__name__)
_DECLINED, _TOO_SMALL = -1, -2


def available() -> bool:
    """Whether the compiled parser is there (if not, says so once in the log)."""
    if _fastparse is None and not _warned.is_set():
        _warned.set()
        _log.warning("recsys.data.fastparse is not built (%s): parsing text with pyarrow only; build it with `pip install -e .`", _IMPORT_ERROR)
    return _fastparse is not None


@dataclass(frozen=True)
class FastLayout:
    """The role of each column of a line: ``l`` label, ``d`` dense, ``s`` categorical, ``x`` unused."""

    roles: str
    delimiter: str

    @property
    def dense(self) -> int:
        return self.roles.count("d")

    @property
    def sparse(self) -> int:
        return self.roles.count("s")


def fast_layout(columns: Sequence[str], label: str, dense: Sequence[str], sparse: Sequence[str], delimiter: str) -> FastLayout | None:
    """The layout of these columns (``dense`` and ``sparse`` in field order, as they appear in the line), or None."""
    roles = {label: "l", **dict.fromkeys(dense, "d"), **dict.fromkeys(sparse, "s")}
    layout = FastLayout("".join(roles.get(c, "x") for c in columns), delimiter)
    in_order = [c for c in columns if roles.get(c) == "d"] == list(dense) and [c for c in columns if roles.get(c) == "s"] == list(sparse)
    plain = len(delimiter) == 1 and 0 < ord(delimiter) < 0x80 and delimiter != "\n"
    return layout if plain and in_order and layout.roles.count("l") == 1 and len(columns) >= 2 and available() else None


@dataclass
class FastRows:
    """Rows parsed by the fast path: label (float32), dense (float64, NaN missing) and raw ids, one array per field."""

    label: np.ndarray
    dense: list[np.ndarray]
    sparse: list[np.ndarray]

    @property
    def num_rows(self) -> int:
        return len(self.label)


class RowBuffer:
    """Rows of consecutive blocks gathered into one set of column arrays (no copy per block)."""

    def __init__(self, layout: FastLayout, capacity: int = 1 << 16) -> None:
        self.layout = layout
        self.rows = 0
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        """Arrays from Arrow's memory pool (while converting, jemalloc, which keeps freed pages a while: the
        next buffers reuse them instead of faulting fresh zeroed pages in)."""
        self.capacity = capacity
        ids, values = 8 * self.layout.sparse * capacity, 8 * self.layout.dense * capacity
        whole = np.frombuffer(pa.allocate_buffer(ids + values + 4 * capacity), np.uint8)
        self.sparse = whole[:ids].view(np.int64).reshape(self.layout.sparse, capacity)
        self.dense = whole[ids : ids + values].view(np.float64).reshape(self.layout.dense, capacity)
        self.label = whole[ids + values :].view(np.float32)

    def _grow(self, capacity: int) -> None:
        label, dense, sparse, rows = self.label, self.dense, self.sparse, self.rows
        self._allocate(capacity)
        self.label[:rows], self.dense[:, :rows], self.sparse[:, :rows] = label[:rows], dense[:, :rows], sparse[:, :rows]

    def parse(self, data: memoryview | bytes | object) -> int | None:
        """Parse the lines of ``data`` (whole lines; the last may lack its newline) after the rows held: their number, or None (declined)."""
        assert _fastparse is not None
        while True:
            args = (self.layout.roles, ord(self.layout.delimiter), self.label, self.dense, self.sparse, self.rows, self.capacity)
            n = _fastparse.parse_rows(data, *args)
            if n == _TOO_SMALL:
                self._grow(self.capacity + self.capacity // 2 + 1)
                continue
            if n == _DECLINED:
                return None
            self.rows += n
            return n

    def take(self) -> FastRows:
        """The rows held, as one array per field; the buffer starts afresh, with room for about as many (what is
        allocated and not used stays resident when the pool hands out pages it kept)."""
        n = self.rows
        rows = FastRows(self.label[:n], [d[:n] for d in self.dense], [s[:n] for s in self.sparse])
        self.rows = 0
        self._allocate(max(1024, n + n // 8))
        return rows
