"""Field-aware libFM: each field its own sparse feature.

* libFFM lines ``label field:idx:val ...``: ``field`` is a non-negative integer; the field
  becomes the sparse feature ``f<field>``;
* positional libFM (``label idx:val ...`` with ``--libfm-fields positional``): the k-th token
  of every line is field ``f<k>``; every line has the same number of tokens, and each position
  keeps to its own range of (integer) indices: a line whose index falls in, or stretches its
  position's range over, another position's range is a bad row naming both.

Rows are staged as one bag (ids, field codes, weights) since libFFM's fields are only known
once read; ``split_fields`` turns a staged batch into one weighted multi-valued column per field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.errors import Issue
from recsys.data.parse import SparseValues, parse_floats
from recsys.data.sources import first_per_row, split_pairs, split_tokens
from recsys.data.vocab import FrequencyCounter
from recsys.features import id_column, weight_column
from recsys.hashing import hash64_strings

FIELD_CODE_SUFFIX = "__f"
MAX_FIELDS = 1 << 16


def field_name(code: int) -> str:
    return f"f{code}"


def _integers(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, mask of non-integers) of a string column."""
    values, bad = parse_floats(col)
    with np.errstate(invalid="ignore"):
        bad = bad | np.isnan(values) | (values != np.floor(values)) | (np.abs(values) >= 2**53)
    return np.where(bad, 0, values).astype(np.int64), bad


@dataclass
class PositionRanges:
    """The index range each position has kept to so far (positional libFM)."""

    fields: int
    lo: np.ndarray = field(init=False)
    hi: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lo = np.full(self.fields, np.iinfo(np.int64).max, np.int64)
        self.hi = np.full(self.fields, np.iinfo(np.int64).min, np.int64)

    def check(self, index: np.ndarray, rows_ok: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Rows (of ``index``: [rows, fields]) that break the ranges, and a message per row (else '')."""
        bad = np.zeros(len(index), dtype=bool)
        messages = [""] * len(index)
        candidates = np.flatnonzero(rows_ok)
        while len(candidates):
            block = index[candidates]
            lo = np.minimum(np.minimum.accumulate(block, axis=0), self.lo)
            hi = np.maximum(np.maximum.accumulate(block, axis=0), self.hi)
            overlap = (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])
            overlap &= ~np.eye(self.fields, dtype=bool)
            hits = overlap.any(axis=(1, 2))
            if not hits.any():
                self.lo, self.hi = lo[-1], hi[-1]
                break
            r = int(np.argmax(hits))
            if r:
                self.lo, self.hi = lo[r - 1], hi[r - 1]
            row = candidates[r]
            bad[row] = True
            messages[row] = self._describe(index[row])
            candidates = candidates[r + 1 :]
        return bad, messages

    def _describe(self, values: np.ndarray) -> str:
        for k, v in enumerate(values.tolist()):
            lo, hi = min(self.lo[k], v), max(self.hi[k], v)
            for j in range(self.fields):
                if j != k and self.lo[j] <= self.hi[j] and lo <= self.hi[j] and self.lo[j] <= hi:
                    return (
                        f"index {v} at position {k} (field {field_name(k)}) overlaps the index range "
                        f"[{self.lo[j]}, {self.hi[j]}] of position {j} (field {field_name(j)}); positional libFM "
                        "needs each position to keep to its own index range"
                    )
        return "index ranges of positions overlap"


@dataclass
class FieldLines:
    """Parsed field-aware lines of a chunk."""

    label: pa.Array
    values: SparseValues  # ids, offsets, weights, and ``fields`` (the field code of each value)
    issues: list[Issue]


def parse_field_lines(text: pa.Array, positional: int | None, ranges: PositionRanges | None) -> FieldLines:
    """Split trimmed, non-blank lines: libFFM (``positional`` None) or positional libFM of that many fields."""
    n = len(text)
    label, flat, parents = split_tokens(text)
    if positional is None:
        parts = pc.split_pattern(flat, ":", max_splits=2)
        offsets = parts.offsets.to_numpy() - parts.offsets[0].as_py()
        pieces = parts.flatten()
        ok3 = np.diff(offsets) == 3
        starts = offsets[:-1]
        codes_str = pieces.take(pa.array(starts))
        idx = pieces.take(pa.array(np.where(ok3, starts + 1, 0), mask=~ok3))
        val = pieces.take(pa.array(np.where(ok3, starts + 2, 0), mask=~ok3))
        codes, bad_code = _integers(codes_str)
        bad_code |= (codes < 0) | (codes >= MAX_FIELDS) | ~ok3
        what = "feature must be field:idx:value with an integer field and a numeric value, found"
    else:
        idx, val = split_pairs(flat)
        line_start = np.searchsorted(parents, np.arange(n))
        codes = np.arange(len(flat), dtype=np.int64) - line_start[parents]
        bad_code = np.zeros(len(flat), dtype=bool)
        what = "feature must be idx:value with an integer idx and a numeric value, found"
    weights, bad_val = parse_floats(val)
    bad_tok = bad_val | np.isnan(weights) | pc.fill_null(pc.equal(idx, ""), True).to_numpy(zero_copy_only=False)
    bad_tok |= bad_code
    index = None
    if positional is not None:
        index, bad_idx = _integers(idx.fill_null(""))
        bad_tok |= bad_idx
    bad_rows, first = first_per_row(bad_tok, parents, n)
    offsets = np.zeros(n + 1, np.int64)
    counts = np.bincount(parents, minlength=n)
    np.cumsum(counts, out=offsets[1:])
    issues = [Issue(bad_rows, "bad_feature", "features", what, pc.take(flat, pa.array(first, mask=first < 0)))]
    if positional is not None:
        wrong = (counts != positional) & ~bad_rows
        issues.append(Issue(wrong, "wrong_field_count", "features", f"expected {positional} idx:value tokens, found", pa.array(counts)))
        if ranges is not None and index is not None:
            ok = ~(bad_rows | wrong)
            grid = np.zeros((n, positional), np.int64)
            rows_ok = np.flatnonzero(ok)
            grid[rows_ok] = index[np.repeat(ok, counts)].reshape(-1, positional)
            bad_range, messages = ranges.check(grid, ok)
            issues.append(Issue(bad_range, "index_out_of_range", None, "", pa.array(messages)))  # the message names both fields
    ids = hash64_strings(idx.fill_null(""))
    values = SparseValues(ids, offsets, np.nan_to_num(weights).astype(np.float32))
    values.fields = codes.astype(np.int32)
    return FieldLines(label, values, issues)


class FieldCounters:
    """Train frequency counts of each field's ids, fields added as they appear."""

    def __init__(self) -> None:
        self.counters: dict[int, FrequencyCounter] = {}

    def count(self, values: SparseValues, train: np.ndarray) -> None:
        assert values.offsets is not None and values.fields is not None
        flat_train = np.repeat(train, np.diff(values.offsets))
        for code in np.unique(values.fields).tolist():
            m = (values.fields == code) & flat_train
            counter = self.counters.setdefault(code, FrequencyCounter())
            counter.add(*np.unique(values.ids[m], return_counts=True))

    def codes(self) -> list[int]:
        return sorted(self.counters)


def staged_field_columns(name: str) -> list[pa.Field]:
    """Staged columns of the bag of field values: ids, weights, field codes."""
    return [
        pa.field(id_column(name), pa.list_(pa.int64())),
        pa.field(weight_column(name), pa.list_(pa.float32())),
        pa.field(name + FIELD_CODE_SUFFIX, pa.list_(pa.int32())),
    ]


def split_fields(batch: pa.RecordBatch, name: str, codes: list[int]) -> dict[str, tuple[pa.Array, pa.Array]]:
    """Per field name: (list of raw ids, list of weights) of each row of a staged batch."""
    ids = batch.column(id_column(name))
    flat_ids = ids.values.to_numpy()
    flat_w = batch.column(weight_column(name)).values.to_numpy()
    flat_f = batch.column(name + FIELD_CODE_SUFFIX).values.to_numpy()
    parents = pc.list_parent_indices(ids).to_numpy(zero_copy_only=False)
    n = len(batch)
    out = {}
    for code in codes:
        m = flat_f == code
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(np.bincount(parents[m], minlength=n), out=offsets[1:])
        off = pa.array(offsets, pa.int32())
        out[field_name(code)] = (
            pa.ListArray.from_arrays(off, pa.array(flat_ids[m], pa.int64())),
            pa.ListArray.from_arrays(off, pa.array(flat_w[m], pa.float32())),
        )
    return out
