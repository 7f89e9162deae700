"""The converter's categorical kernels: compiled (``recsys.data.fastcat``) when built, else none.

``fastcat`` (``recsys/data/fastcat.c``, built by ``pip install``) hashes Arrow string columns
from their buffers, counts train frequencies and looks ids up in vocabularies, each bit-identical
to the numpy/pyarrow reference it replaces (``recsys.hashing.hash64_strings``,
``recsys.data.vocab.FrequencyCounter``, the pandas index of ``Vocabulary``). A source checkout
that was never built has no ``fastcat``: ``compiled()`` is then false (one warning is logged)
and the callers take the reference path.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType

import numpy as np
import pyarrow as pa

from recsys.hashing import hash64_str

try:
    from recsys.data import fastcat as _fastcat
except ImportError as _exc:  # a source checkout never built
    _fastcat, _IMPORT_ERROR = None, str(_exc)
else:
    _IMPORT_ERROR = ""

MISSING_ID = hash64_str("")
_warned = threading.Event()
_log = logging.getLogger(__name__)


def compiled() -> bool:
    """Whether the compiled kernels are there (if not, says so once in the log)."""
    if _fastcat is None and not _warned.is_set():
        _warned.set()
        _log.warning(
            "recsys.data.fastcat is not built (%s): converting with the slower numpy path; build it with `pip install -e .` or `make install`",
            _IMPORT_ERROR,
        )
    return _fastcat is not None


def module() -> ModuleType:
    """The compiled module (``ImportError`` when it is not built)."""
    if _fastcat is None:
        raise ImportError(f"recsys.data.fastcat is not built: {_IMPORT_ERROR}")
    return _fastcat


def hash_array(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``hash64_strings`` of a string or large_string column (nulls as ''), chunk by chunk from the
    Arrow buffers: no dictionary encoding, no copy of the column."""
    fastcat = module()
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out = np.empty(len(col), np.int64)
    pos = 0
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        large = pa.types.is_large_string(chunk.type)
        if not (large or pa.types.is_string(chunk.type)):
            raise TypeError(f"hash_array: expected string values, got {chunk.type}")
        validity, offsets, data = chunk.buffers()
        fastcat.hash_strings(validity if chunk.null_count else None, offsets, data, chunk.offset, n, large, out[pos : pos + n])
        pos += n
    return out


class IdCounter:
    """``FrequencyCounter`` in a compiled hash table: the same counts, fed row by row."""

    def __init__(self) -> None:
        self._counter = module().Counter(MISSING_ID)

    def add(self, ids: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts[i]`` occurrences of ``ids[i]`` (the missing id is skipped)."""
        self._counter.add(np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(counts, np.int64))

    def add_rows(self, ids: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Count each ``ids[i]`` where ``rows[i]`` (``None``: every one; the missing id is skipped)."""
        flags = None if rows is None else np.ascontiguousarray(rows, np.bool_)
        self._counter.add_rows(np.ascontiguousarray(ids, np.int64), flags)

    def __len__(self) -> int:
        return len(self._counter)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids sorted ascending, counts), as ``FrequencyCounter.result``."""
        ids = np.empty(len(self._counter), np.int64)
        counts = np.empty(len(ids), np.int64)
        self._counter.export(ids, counts)
        order = np.argsort(ids)
        return ids[order], counts[order]


class IdIndex:
    """Position of each of distinct int64 ids, and the vocabulary rule on top of it."""

    def __init__(self, ids: np.ndarray) -> None:
        self._index = module().Index(np.ascontiguousarray(ids, np.int64))

    def lookup(self, ids: np.ndarray, missing_index: int, oov_index: int, reserved: int) -> np.ndarray:
        """``missing_index`` for the missing id, ``position + reserved`` for a known id, else ``oov_index``."""
        out = np.empty(len(ids), np.int64)
        self._index.lookup(np.ascontiguousarray(ids, np.int64), out, MISSING_ID, missing_index, oov_index, reserved)
        return out
