"""Vectorised parsing of string columns: numbers, labels, dense transform, categorical ids.

Sparse values become ``SparseValues``: raw 64-bit ids (``recsys.hashing.hash64_strings``, or the
compiled ``recsys.data.kernels.hash_array`` when built) and, on the reference path, for
single-valued columns, the chunk's dictionary (distinct ids and each row's entry), which makes
frequency counting a ``bincount``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data import kernels
from recsys.hashing import hash64_distinct, hash64_str, hash64_strings

MISSING_ID = hash64_str("")
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@dataclass
class SparseValues:
    """Raw ids of one sparse field over the rows of a chunk."""

    ids: np.ndarray  # int64, flat
    offsets: np.ndarray | None = None  # int64 [n + 1] for multi-valued fields
    weights: np.ndarray | None = None  # float32, flat, for weighted fields
    dict_ids: np.ndarray | None = None  # single-valued: distinct ids of the chunk
    dict_index: np.ndarray | None = None  # single-valued: each row's entry in dict_ids
    fields: np.ndarray | None = None  # field-aware libFM: int32 field code of each value, flat

    def take(self, keep: np.ndarray) -> "SparseValues":
        """Rows where ``keep`` is true."""
        if self.offsets is None:
            index = None if self.dict_index is None else self.dict_index[keep]
            return SparseValues(self.ids[keep], dict_ids=self.dict_ids, dict_index=index)
        lengths = np.diff(self.offsets)
        flat_keep = np.repeat(keep, lengths)
        offsets = np.zeros(int(keep.sum()) + 1, np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        weights = None if self.weights is None else self.weights[flat_keep]
        fields = None if self.fields is None else self.fields[flat_keep]
        return SparseValues(self.ids[flat_keep], offsets, weights, fields=fields)

    def counts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct ids, occurrences) over the rows where ``rows`` is true, missing excluded."""
        if self.offsets is None and self.dict_index is not None and self.dict_ids is not None:
            counts = np.bincount(self.dict_index[rows], minlength=len(self.dict_ids))
            present = (counts > 0) & (self.dict_ids != MISSING_ID)
            return self.dict_ids[present], counts[present]
        ids = self.ids[rows] if self.offsets is None else self.ids[np.repeat(rows, np.diff(self.offsets))]
        uniq, counts = np.unique(ids, return_counts=True)
        present = uniq != MISSING_ID
        return uniq[present], counts[present]


def as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous Arrow array."""
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _cast_float(col: pa.Array) -> pa.Array | None:
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        return None


def _cast_each(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Slow path: cast value by value (only when the pattern check disagrees with Arrow)."""
    out: list[float | None] = []
    bad = np.zeros(len(col), dtype=bool)
    for i, value in enumerate(col.to_pylist()):
        if value is None:
            out.append(None)
            continue
        cast = _cast_float(pa.array([value], pa.string()))
        bad[i] = cast is None
        out.append(None if cast is None else cast[0].as_py())
    return pa.array(out, pa.float64()), bad


def parse_floats(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for missing, mask of non-numeric or non-finite values)."""
    cast = _cast_float(col)
    bad = np.zeros(len(col), dtype=bool)
    if cast is None:
        ok = pc.fill_null(pc.match_substring_regex(col, _NUMBER), True)
        cleaned = pc.if_else(ok, col, pa.scalar(None, pa.string()))
        bad = ~ok.to_numpy(zero_copy_only=False)
        cast = _cast_float(cleaned)
        if cast is None:
            cast, bad = _cast_each(col)
    values = cast.to_numpy(zero_copy_only=False)  # nulls -> NaN
    nonfinite = ~np.isfinite(values)
    if not bad.any() and np.count_nonzero(nonfinite) == cast.null_count:
        return values, bad  # every non-finite value is a null: nothing to flag
    present = ~np.asarray(cast.is_null().to_numpy(zero_copy_only=False))
    bad |= present & nonfinite
    values = np.where(present & ~bad, values, np.nan)
    return values, bad


def slog1p(values: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)`` as float32; NaN (missing or bad) -> 0."""
    out = np.sign(values) * np.log1p(np.abs(values))
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def parse_labels(col: pa.Array, allowed: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(label 0/1 as float32, mask of missing or disallowed labels); -1 maps to 0."""
    if pc.all(pc.fill_null(pc.or_(pc.equal(col, "1"), pc.equal(col, "0")), False)).as_py():
        return pc.equal(col, "1").to_numpy(zero_copy_only=False).astype(np.float32), np.zeros(len(col), bool)
    values, bad = parse_floats(col)
    bad |= ~np.isin(values, np.asarray(allowed, dtype=np.float64))
    return (values == 1).astype(np.float32), bad


def hash_single(col: pa.Array | pa.ChunkedArray) -> SparseValues:
    """Raw ids of a single-valued categorical column; null and '' are the missing value."""
    if kernels.compiled() and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return SparseValues(kernels.hash_array(col))
    return hash_single_reference(as_array(col))


def hash_single_reference(col: pa.Array) -> SparseValues:
    """``hash_single`` by an Arrow dictionary encoding and the numpy hash of its distinct values."""
    encoded = pc.dictionary_encode(col, null_encoding="encode")
    dict_ids = hash64_distinct(encoded.dictionary)
    index = encoded.indices.to_numpy(zero_copy_only=False)
    return SparseValues(dict_ids[index], dict_ids=dict_ids, dict_index=index)


def hash_multi(col: pa.Array, separator: str) -> SparseValues:
    """Raw ids of a list-valued column ``a<sep>b<sep>c``; empty elements are dropped."""
    lists = pc.split_pattern(pc.fill_null(col, ""), separator)
    flat = lists.flatten()
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    flat = flat.filter(pa.array(keep))
    offsets = np.zeros(len(col) + 1, np.int64)
    np.cumsum(np.bincount(parents[keep], minlength=len(col)), out=offsets[1:])
    compiled = kernels.compiled() and (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type))
    return SparseValues(kernels.hash_array(flat) if compiled else hash64_strings(flat), offsets)


def constant_values(values: list[str], index: np.ndarray) -> SparseValues:
    """Sparse values drawn from a small fixed list of raw strings, by position."""
    dict_ids = hash64_strings(values)
    return SparseValues(dict_ids[index], dict_ids=dict_ids, dict_index=index)
