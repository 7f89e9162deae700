"""Format-specific value parsing: Avazu's ``hour`` and libFM's ``idx:val`` lines."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.parse import SparseValues, constant_values, parse_floats
from recsys.hashing import hash64_strings

HOURS = [str(h) for h in range(24)]
WEEKDAYS = [str(d) for d in range(7)]


def first_per_row(mask: np.ndarray, parents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a flagged token, each row's first flagged token or -1)."""
    bad_rows = np.zeros(n, dtype=bool)
    first = np.full(n, -1, np.int64)
    if mask.any():
        tok = np.flatnonzero(mask)
        rows, pos = np.unique(parents[tok], return_index=True)
        bad_rows[rows] = True
        first[rows] = tok[pos]
    return bad_rows, first


def _hour_parts(col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hour of day, weekday with Monday 0, bad mask) of YYMMDDHH values."""
    values, bad = parse_floats(col)
    with np.errstate(invalid="ignore"):
        ok = ~np.isnan(values) & (values >= 0) & (values < 1e8) & (values == np.floor(values))
    hours = np.zeros(len(col), np.int64)
    weekdays = np.zeros(len(col), np.int64)
    uniq, inverse = np.unique(values[ok].astype(np.int64), return_inverse=True)
    hh = uniq % 100
    dates = pd.to_datetime(pd.Series(uniq // 100).map("{:06d}".format), format="%y%m%d", errors="coerce")
    good = (hh < 24) & dates.notna().to_numpy()
    wd = dates.dt.day_of_week.fillna(0).to_numpy().astype(np.int64)
    rows = np.flatnonzero(ok)
    hours[rows] = hh[inverse]
    weekdays[rows] = wd[inverse]
    ok[rows] = good[inverse]
    hours[~ok] = 0
    return hours, weekdays, bad | ~ok


def derive_hour(col: pa.Array, kind: Literal["hour_of_day", "weekday"]) -> tuple[SparseValues, np.ndarray]:
    """The ``hour_of_day`` or ``weekday`` sparse values of an Avazu ``hour`` column, and bad rows."""
    hours, weekdays, bad = _hour_parts(col)
    if kind == "hour_of_day":
        return constant_values(HOURS, hours), bad
    return constant_values(WEEKDAYS, weekdays), bad


def split_tokens(text: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """(first token of each line, the other tokens flat, the line of each other token)."""
    tokens = pc.ascii_split_whitespace(text)
    flat = tokens.flatten()
    starts = tokens.offsets.to_numpy()[:-1] - tokens.offsets[0].as_py()
    is_first = np.zeros(len(flat), dtype=bool)
    is_first[starts] = True
    parents = pc.list_parent_indices(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    rest = pa.array(~is_first)
    return flat.take(pa.array(starts)), flat.filter(rest), parents[~is_first]


def split_pairs(flat: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``idx:val`` tokens to (idx, val); val is null where a token has no ':'."""
    parts = pc.split_pattern(flat, ":", max_splits=1)
    offsets = parts.offsets.to_numpy() - parts.offsets[0].as_py()
    values = parts.flatten()
    has_val = np.diff(offsets) == 2
    val_pos = np.where(has_val, offsets[:-1] + 1, 0)
    return values.take(pa.array(offsets[:-1])), values.take(pa.array(val_pos, mask=~has_val))


def parse_libfm_lines(text: pa.Array) -> tuple[pa.Array, SparseValues, np.ndarray, pa.Array]:
    """Split non-blank, trimmed libFM lines.

    Returns the label strings, the ``features`` values (ids of the idx strings, weights),
    the mask of rows with a malformed token, and each row's first malformed token (or null).
    """
    n = len(text)
    label, flat, parents = split_tokens(text)
    idx, val = split_pairs(flat)
    weights, bad_val = parse_floats(val)
    empty_idx = pc.equal(idx, "").to_numpy(zero_copy_only=False)
    bad_tok = bad_val | np.isnan(weights) | empty_idx
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(parents, minlength=n), out=offsets[1:])
    values = SparseValues(hash64_strings(idx), offsets, np.nan_to_num(weights).astype(np.float32))
    bad_rows, first = first_per_row(bad_tok, parents, n)
    first_bad = pc.take(flat, pa.array(first, mask=first < 0))
    return label, values, bad_rows, first_bad
