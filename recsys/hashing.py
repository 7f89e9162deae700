"""The project's one hash function family, shared by data conversion, training and serving.

Two functions, both pinned by golden-value tests (``tests/unit/test_hashing.py``):

* ``hash64_strings``: the stable 64-bit id of a raw categorical value. FNV-1a (64 bit) over
  the value's UTF-8 bytes, then the MurmurHash3 ``fmix64`` finaliser. The empty string is the
  *missing* value. Identical on every machine; never Python's ``hash()``.
* ``mix64`` / ``mix64_np``: a salted 64-bit mixer for ids that are already integers,
  ``fmix64(id XOR salt)``; hashing methods map an id into ``B`` rows as
  ``mix64(id, salt) mod B`` (non-negative). ``salt_for(name)`` derives a salt from a name, so
  salts depend on feature names, never on feature order. ``bucket_per_value`` is ``bucket``
  with a salt and a size per value, to hash many features' ids in one pass.

All 64-bit values are stored as ``int64`` (two's-complement view of the unsigned value).

Example:
    >>> int(hash64_strings(["68fd1e64"])[0]) == hash64_str("68fd1e64")
    True
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_M1 = 0xFF51AFD7ED558CCD
_M2 = 0xC4CEB9FE1A85EC53
_MASK64 = (1 << 64) - 1
HASH_NAME = "fnv1a64+fmix64"
_LIST_MAX = 192  # lists of up to this many strings skip Arrow (measured break-even ~250)


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * _M1) & _MASK64
    h ^= h >> 33
    h = (h * _M2) & _MASK64
    h ^= h >> 33
    return h


def _to_signed(h: int) -> int:
    return h - (1 << 64) if h >= (1 << 63) else h


def hash64_str(value: str) -> int:
    """Reference (scalar) implementation of ``hash64_strings`` for one value."""
    h = FNV_OFFSET
    for b in value.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & _MASK64
    return _to_signed(_fmix64_int(h))


_U33, _UM1, _UM2 = np.uint64(33), np.uint64(_M1), np.uint64(_M2)


def _fmix64_np(h: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """fmix64 of uint64 ``h``, in place on a new array (``overwrite``: on ``h`` itself, a fresh
    array the caller gives up)."""
    if overwrite:
        h ^= h >> _U33
    else:
        h = h ^ (h >> _U33)
    h *= _UM1
    h ^= h >> _U33
    h *= _UM2
    h ^= h >> _U33
    return h


def hash64_strings(values: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> np.ndarray:
    """Vectorised ``hash64_str`` over a string array; nulls hash like the empty string.

    A short list of strings is hashed from its UTF-8 bytes directly (building an Arrow array costs
    more); past 1024 values, distinct values are hashed once (Arrow dictionary encoding), then gathered.
    """
    if isinstance(values, (list, tuple)) and len(values) <= _LIST_MAX and set(map(type, values)) <= {str}:
        found = _hash64_list(values)
        if found is not None:
            return found
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    arr = pc.fill_null(arr, "")
    if len(arr) <= 1024:
        return _hash64_plain(arr)
    encoded = pc.dictionary_encode(arr)
    return _hash64_plain(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False)]


def hash64_distinct(arr: pa.Array) -> np.ndarray:
    """``hash64_strings`` of a string array whose values are (mostly) distinct, such as an Arrow
    dictionary: each value hashed once, without a dictionary encoding of its own; nulls as ''."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return _hash64_plain(pc.fill_null(arr, "") if arr.null_count else arr)


def _hash64_plain(arr: pa.Array) -> np.ndarray:
    """``hash64_utf8`` over an Arrow string array's buffers: no Python per value."""
    n = len(arr)
    if n == 0:
        return np.full(0, FNV_OFFSET, dtype=np.uint64).view(np.int64)
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return hash64_utf8(data, offsets[:-1], offsets[1:] - offsets[:-1])


_FNV_INVERSE = pow(FNV_PRIME, -1, 1 << 64)
_starts = np.array([FNV_OFFSET], np.uint64)  # _starts[k]: the state that k zero bytes take to FNV_OFFSET


def _fnv_starts(k: int) -> np.ndarray:
    """``FNV_OFFSET * FNV_PRIME^-k mod 2^64`` for ``0..k`` (grown on demand, never changed in place)."""
    global _starts
    table = _starts
    if len(table) <= k:
        values = [int(table[-1])]
        for _ in range(len(table), max(k + 1, 2 * len(table))):
            values.append(values[-1] * _FNV_INVERSE & _MASK64)
        table = _starts = np.concatenate([table, np.array(values[1:], np.uint64)])
    return table


_ALIGNED_CELLS = 1 << 18  # the most bytes (padding included) hashed right-aligned: a few MiB of temporaries


def _aligned(n: int, longest: int, total: int) -> bool:
    """Whether ``n`` strings of ``total`` bytes, the longest ``longest``, hash right-aligned: lengths
    alike and the padded matrix small (large arrays, such as a dataset's dictionaries, take the narrowing loop)."""
    cells = n * longest
    return cells <= _ALIGNED_CELLS and cells <= 4 * total + 1024


def _hash64_aligned(columns: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """FNV-1a + fmix64 of right-aligned strings: ``columns[j]`` holds every string's j-th byte, with
    ``pad[i]`` zero bytes in front of string ``i``.

    String ``i`` starts from the state its ``pad[i]`` zero bytes take to ``FNV_OFFSET`` (an FNV-1a
    step over byte 0 multiplies by the odd prime, invertible mod 2^64), so every position is one
    xor and one multiply over all strings, with no mask.
    """
    h = _fnv_starts(len(columns))[pad]
    prime = np.uint64(FNV_PRIME)
    for column in columns:
        h ^= column
        h *= prime
    return _fmix64_np(h).view(np.int64)


def _hash64_list(texts: Sequence[str]) -> np.ndarray | None:
    """``hash64_strings`` of a short list of Python strings of similar lengths (``None``: too unequal)."""
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    longest = int(lengths.max()) if len(encoded) else 0
    if not _aligned(len(encoded), longest, int(lengths.sum())):
        return None
    padded = np.frombuffer(b"".join([e.rjust(longest, b"\0") for e in encoded]), np.uint8).reshape(len(encoded), longest)
    return _hash64_aligned(np.ascontiguousarray(padded.T, np.uint64), longest - lengths)


def hash64_utf8(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``hash64_strings`` of byte strings ``data[starts[i] : starts[i] + lengths[i]]`` (``data`` uint8,
    ``starts`` and ``lengths`` int64); a few numpy calls per byte position, right-aligned when the
    lengths are alike, else narrowing the set of strings still going at each position."""
    n = len(starts)
    if n == 0:
        return np.full(0, FNV_OFFSET, dtype=np.uint64).view(np.int64)
    longest = int(lengths.max())
    block = max(1, _ALIGNED_CELLS // max(longest, 1))
    if n > block and longest <= 256 and not _aligned(n, longest, int(lengths.sum())):  # many short strings: right-aligned blocks
        out = np.empty(n, np.int64)
        for s in range(0, n, block):
            out[s : s + block] = hash64_utf8(data, starts[s : s + block], lengths[s : s + block])
        return out
    if _aligned(n, longest, int(lengths.sum())):
        pad = longest - lengths
        at = (starts - pad)[None, :] + np.arange(longest)[:, None]
        columns = np.where(at >= starts[None, :], data.take(at, mode="clip") if len(data) else 0, 0).astype(np.uint64)
        return _hash64_aligned(columns, pad)
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    active = np.arange(n)
    pos = 0
    while active.size:
        active = active[lengths[active] > pos]
        if active.size <= _FEW_LEFT:  # a few long strings (a 9 MB value): one Python loop each is ~20x faster
            for i in active:
                h[i] = _fnv1a_bytes(int(h[i]), data[starts[i] + pos : starts[i] + lengths[i]].tobytes())
            break
        byte = data[starts[active] + pos].astype(np.uint64)
        h[active] = (h[active] ^ byte) * prime
        pos += 1
    return _fmix64_np(h).view(np.int64)


_FEW_LEFT = 8  # strings still going below which the narrowing loop finishes them one by one


def _fnv1a_bytes(h: int, data: bytes) -> int:
    """FNV-1a 64 state ``h`` continued over ``data``."""
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK64
    return h


def salt_for(name: str) -> int:
    """A 64-bit salt (as signed int64) derived from a name, e.g. ``salt_for("C1#0")``."""
    return hash64_str(name)


def mix64_np(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """``fmix64(ids XOR salt)`` in numpy; ``ids`` is int64, returns int64."""
    x = ids.astype(np.int64, copy=False).view(np.uint64) ^ np.uint64(salt & _MASK64)
    with np.errstate(over="ignore"):
        return _fmix64_np(x).view(np.int64)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _signed_const(c: int) -> int:
    return _to_signed(c & _MASK64)


def mix64(ids: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """``fmix64(ids XOR salt)`` on int64 tensors, bit-identical to ``mix64_np``."""
    x = ids.to(torch.int64) ^ _signed_const(salt)
    x = x ^ _shr(x, 33)
    x = x * _signed_const(_M1)
    x = x ^ _shr(x, 33)
    x = x * _signed_const(_M2)
    return x ^ _shr(x, 33)


def bucket(ids: torch.Tensor, salt: int, num_buckets: int) -> torch.Tensor:
    """Row of each id in a table of ``num_buckets`` rows: ``mix64(ids, salt) mod num_buckets``.

    The unsigned value is reduced without overflow: ``(hi * 2^32 + lo) mod B`` computed from
    the 32-bit halves, so the result equals the unsigned 64-bit modulo.
    """
    if not 0 < num_buckets < 2**31:
        raise ValueError(f"num_buckets must be in [1, 2**31), got {num_buckets}")
    h = mix64(ids, salt)
    hi = _shr(h, 32)
    lo = h & 0xFFFFFFFF
    b = int(num_buckets)
    return ((hi % b) * ((1 << 32) % b) + lo) % b


def bucket_np(ids: np.ndarray, salt: int, num_buckets: int) -> np.ndarray:
    """numpy twin of ``bucket``: ``uint64(mix64) mod num_buckets``."""
    return (mix64_np(ids, salt).view(np.uint64) % np.uint64(num_buckets)).astype(np.int64)


def bucket_per_value_np(ids: np.ndarray, salts: np.ndarray | int, num_buckets: np.ndarray | int) -> np.ndarray:
    """numpy twin of ``bucket_per_value``: a salt (signed int64) and a table size per id
    (or one for all). Works in place on one fresh array: ~3x faster than torch's int64 ops,
    which have no unsigned shift."""
    x = np.bitwise_xor(np.asarray(ids).astype(np.int64, copy=False).view(np.uint64), np.asarray(salts, dtype=np.int64).view(np.uint64))
    with np.errstate(over="ignore"):
        x = _fmix64_np(x, overwrite=True)
    x %= np.asarray(num_buckets, dtype=np.int64).view(np.uint64)
    return x.view(np.int64)


def bucket_per_value(ids: torch.Tensor, salts: torch.Tensor, num_buckets: torch.Tensor) -> torch.Tensor:
    """``bucket`` with a salt and a table size per value, in one vectorised pass.

    ``salts`` (int64, the signed view of each 64-bit salt, e.g. ``salt_for(name)``) and
    ``num_buckets`` (int64, each in ``[1, 2**31)``) broadcast against ``ids``. Bit-identical to
    calling ``bucket(ids[i], salts[i], num_buckets[i])`` value by value; used when one flat
    tensor holds the ids of several features, each hashed with its own salt and size. CPU
    tensors go through ``bucket_per_value_np`` (same bits, ~3x faster), others through torch ops.
    """
    if ids.device.type == "cpu":
        as_np = (t.detach().to(torch.int64).numpy() for t in (ids, salts, num_buckets))
        return torch.from_numpy(bucket_per_value_np(*as_np))
    return _bucket_per_value_torch(ids, salts, num_buckets)


def _bucket_per_value_torch(ids: torch.Tensor, salts: torch.Tensor, num_buckets: torch.Tensor) -> torch.Tensor:
    """``bucket_per_value`` in torch's signed int64 ops (any device)."""
    x = ids.to(torch.int64) ^ salts.to(torch.int64)
    x = x ^ _shr(x, 33)
    x = x * _signed_const(_M1)
    x = x ^ _shr(x, 33)
    x = x * _signed_const(_M2)
    h = x ^ _shr(x, 33)
    b = num_buckets.to(torch.int64)
    hi = _shr(h, 32)
    lo = h & 0xFFFFFFFF
    return ((hi % b) * ((1 << 32) % b) + lo) % b
