"""Which split (0 train, 1 valid, 2 test) each row goes to.

* ``random``: seeded, from ``(seed, file, line)`` only, so it does not depend on chunking;
* ``order``: by position in the input (files in order, then lines): the first ``train``
  fraction of rows is train, the next ``valid`` fraction valid, the rest test;
* ``time``: by a time column and two cut points: ``t < cut1`` train, ``cut1 <= t < cut2``
  valid, ``t >= cut2`` test (numbers, or ISO 8601 dates and times, read as UTC);
* ``presplit``: each file's split is given (``--train A --valid B --test C``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.parse import parse_floats
from recsys.hashing import mix64_np, salt_for

SPLITS = ("train", "valid", "test")
SplitKind = Literal["random", "order", "time", "presplit"]
_FILE_SHIFT = 40  # random split key: file index above the line number


@dataclass(frozen=True)
class SplitPolicy:
    """How rows are assigned to splits (see the module docstring)."""

    kind: SplitKind = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    time_column: str | None = None
    cuts: tuple[str, str] | None = None


def assign_splits(lines: np.ndarray, seed: int, fractions: Sequence[float], file_index: int = 0) -> np.ndarray:
    """Random split of each row, from ``(seed, file index, line number)`` only."""
    key = lines.astype(np.int64) + (np.int64(file_index) << np.int64(_FILE_SHIFT))
    u = (mix64_np(key, salt_for(f"split/{seed}")).view(np.uint64) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    bounds = np.cumsum(np.asarray(fractions, np.float64))[:2]
    return np.searchsorted(bounds, u, side="right").astype(np.int8)


def order_splits(positions: np.ndarray, total: int, fractions: Sequence[float]) -> np.ndarray:
    """Split of each row by its 0-based position among ``total`` rows."""
    bounds = np.round(np.cumsum(np.asarray(fractions, np.float64))[:2] * total)
    return np.searchsorted(bounds, positions.astype(np.float64), side="right").astype(np.int8)


def time_splits(times: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Split of each row by its time against the two cut points."""
    return np.searchsorted(cuts, times, side="right").astype(np.int8)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_cuts(cuts: Sequence[str]) -> tuple[np.ndarray, bool]:
    """(the two cut points, whether they are numbers); dates become int64 nanoseconds UTC.

    Raises ``ValueError`` naming the cut that is neither a number nor a date.
    """
    if len(cuts) != 2:
        raise ValueError(f"expected two cut points (train < cut1 <= valid < cut2 <= test), got {len(cuts)}")
    if all(_is_number(c) for c in cuts):
        values = np.array([float(c) for c in cuts], np.float64)
        numeric = True
    else:
        try:
            values = pd.to_datetime(list(cuts), utc=True, format="ISO8601").as_unit("ns").asi8
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cut points must both be numbers or both ISO 8601 dates: {exc}") from None
        numeric = False
    if values[1] < values[0]:
        raise ValueError(f"cut points must not decrease, got {cuts[0]} then {cuts[1]}")
    return values, numeric


def parse_times(col: pa.Array, numeric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(times comparable with the cuts, mask of missing or unreadable values) of one column."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if numeric:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            values, bad = parse_floats(col)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
            bad = np.zeros(len(col), bool)
        else:
            raise TypeError(f"holds {col.type}, but the cut points are numbers")
        return values, bad | np.isnan(values)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        ns = pc.cast(pc.cast(col, pa.timestamp("ns", col.type.tz if pa.types.is_timestamp(col.type) else None)), pa.int64())
        values = ns.to_numpy(zero_copy_only=False)
        bad = col.is_null().to_numpy(zero_copy_only=False)
        return np.where(bad, 0, values).astype(np.int64), bad
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        encoded = pc.dictionary_encode(col)
        parsed = pd.to_datetime(encoded.dictionary.to_pandas(), utc=True, format="ISO8601", errors="coerce")
        table = parsed.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)
        ok = parsed.notna().to_numpy()
        index = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        bad = (index < 0) | ~ok[np.maximum(index, 0)] if len(table) else np.ones(len(col), bool)
        values = table[np.maximum(index, 0)] if len(table) else np.zeros(len(col), np.int64)
        return np.where(bad, 0, values).astype(np.int64), bad
    raise TypeError(f"holds {col.type}, but the cut points are dates")
