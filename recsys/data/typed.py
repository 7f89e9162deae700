"""Typed (Parquet/Arrow) columns to the values the converters need.

Text input reads every column as strings; Parquet columns keep their types. These functions
accept both: strings go through the same checks as text input, numbers are cast directly,
integers become their decimal strings as categorical values (as serving reads them), and
list columns are multi-valued fields.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.parse import SparseValues, hash_multi, hash_single, parse_floats, parse_labels
from recsys.hashing import hash64_strings


def _decoded(col: pa.Array) -> pa.Array:
    if not pa.types.is_dictionary(col.type):
        return col
    return (
        col.dictionary_decode() if isinstance(col, pa.Array) else pa.chunked_array([c.dictionary_decode() for c in col.chunks], col.type.value_type)
    )


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def value_type(t: pa.DataType) -> pa.DataType:
    """The type of the values (a dictionary's value type, else ``t``)."""
    return t.value_type if pa.types.is_dictionary(t) else t


def type_problem(role: str, t: pa.DataType, separator: str | None = None) -> str | None:
    """Why a column of type ``t`` cannot play ``role`` (label, dense, sparse, multi_valued), or None."""
    t = value_type(t)
    if role in ("label", "dense"):
        ok = is_number(t) or is_text(t)
        want = "numbers (or numeric strings)"
    elif role == "sparse":
        ok = is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)
        want = "strings or integers"
    else:
        inner = value_type(t.value_type) if pa.types.is_list(t) or pa.types.is_large_list(t) else None
        ok = (inner is not None and (is_text(inner) or pa.types.is_integer(inner))) or (is_text(t) and bool(separator))
        want = "a list of strings or integers (or strings split by the separator)"
    return None if ok else f"column type {t} cannot be {role}; expected {want}"


def as_strings(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Categorical values as strings (integers as decimal strings; null stays null)."""
    col = _decoded(col)
    if pa.types.is_string(col.type):
        return col
    return pc.cast(col, pa.string())


def dense_values(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, NaN for missing; mask of unreadable or infinite values)."""
    col = _decoded(col)
    if is_text(col.type):
        return parse_floats(as_strings(col))
    values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN; NaN is missing too
    return values, np.isinf(values)


def label_values(col: pa.Array, allowed: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(label 0/1 float32, mask of missing or disallowed labels, the values as given for messages)."""
    col = _decoded(col)
    if is_text(col.type):
        col = as_strings(col)
        label, bad = parse_labels(col, allowed)
        return label, bad, col
    values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    bad = ~np.isin(values, np.asarray(allowed, np.float64))
    return (values == 1).astype(np.float32), bad, col


def sparse_single(col: pa.Array | pa.ChunkedArray) -> SparseValues:
    """Raw ids of a single-valued categorical column of any supported type."""
    return hash_single(as_strings(col))


def sparse_multi(col: pa.Array, separator: str | None) -> SparseValues:
    """Raw ids of a list column (null and '' elements dropped), or of a string column split by ``separator``."""
    col = _decoded(col)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        return hash_multi(as_strings(col), separator or "")
    lists = col.fill_null(pa.scalar([], col.type)) if col.null_count else col
    flat = as_strings(lists.flatten())
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    keep = pc.fill_null(pc.not_equal(flat, ""), False).to_numpy(zero_copy_only=False)
    flat = flat.filter(pa.array(keep))
    offsets = np.zeros(len(col) + 1, np.int64)
    np.cumsum(np.bincount(parents[keep], minlength=len(col)), out=offsets[1:])
    return SparseValues(hash64_strings(flat), offsets)
