"""The binary lookup request ``application/vnd.recsys.ids.v1``: whole id arrays per feature.

A body is a header and one block per feature, every integer little-endian:

```
offset  size  field
0       4     magic b"RIDS"
4       1     format version: 1
5       1     flags: 0 (reserved)
6       2     u16 number of blocks
then, per block:
        2     u16 feature name length L (1..max_string_length bytes)
        L     the feature name, UTF-8
        1     kind: 0 = raw ids, 1 = UTF-8 strings
        4     u32 count n
kind 0: 8n    int64 raw ids: hash64 of each value's UTF-8 (``recsys.hashing.hash64_strings``, what
              the Parquet shards hold); the missing value is the id of "" (``MISSING_ID``)
kind 1: 4n    u32 byte length of each value, then the values' bytes back to back; "" is missing
```

Nothing may follow the last block. The answer holds one vector per value, blocks in order, values
in order (raw little-endian float32 rows, as the ``Accept: application/octet-stream`` answer of a
JSON request). The server hashes, searches and gathers whole arrays; no value is touched alone.
A malformed body is a ``FormatError`` (HTTP 400) naming the byte offset and the block's feature.

Example:
    >>> body = encode({"C1": np.array([7, -3], np.int64), "C2": ["68fd1e64", ""]})
    >>> [(f, len(v)) for f, v in decode(body, 4096, 1024)]
    [('C1', 2), ('C2', 2)]
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONTENT_TYPE = "application/vnd.recsys.ids.v1"
MAGIC = b"RIDS"
VERSION = 1
RAW_IDS, STRINGS = 0, 1
_HEAD = struct.Struct("<4sBBH")
_BLOCK = struct.Struct("<BI")
_LENGTH = struct.Struct("<H")


class FormatError(ValueError):
    """A body that is not a well-formed ids.v1 request (the message names offset and feature)."""


def encode(blocks: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> bytes:
    """The request body of ``feature -> values``: an integer array is sent as raw ids, anything
    else (a list or array of ``str``/``None``) as UTF-8 strings (``None`` is the missing value)."""
    items = list(blocks.items()) if isinstance(blocks, Mapping) else list(blocks)
    parts = [_HEAD.pack(MAGIC, VERSION, 0, len(items))]
    for feature, values in items:
        name = feature.encode("utf-8")
        parts += [_LENGTH.pack(len(name)), name]
        if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
            parts += [_BLOCK.pack(RAW_IDS, len(values)), np.ascontiguousarray(values).astype("<i8", copy=False).tobytes()]
            continue
        encoded = [b"" if v is None else v.encode("utf-8") for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
        lengths = np.fromiter(map(len, encoded), "<u4", len(encoded))
        parts += [_BLOCK.pack(STRINGS, len(encoded)), lengths.tobytes(), b"".join(encoded)]
    return b"".join(parts)


def _hash_block(data: memoryview, at: int, n: int, total: int, feature: str) -> np.ndarray:
    lengths = np.frombuffer(data, "<u4", n, at).astype(np.int64)
    size = int(lengths.sum())
    start = at + 4 * n
    if start + size > total:
        raise FormatError(f"ids.v1 body truncated at offset {total}: feature '{feature}' needs {size} string bytes from offset {start}")
    blob = np.frombuffer(data, np.uint8, size, start)
    starts = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    from recsys.hashing import hash64_utf8  # here: building bodies (a client) needs numpy only

    try:
        bytes(blob).decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = int(np.searchsorted(starts, exc.start, side="right")) - 1
        raise FormatError(f"feature '{feature}': value {bad} (offset {start + int(starts[bad])}) is not valid UTF-8") from None
    return hash64_utf8(blob, starts, lengths)


def decode(body: bytes, max_items: int, max_string_length: int) -> list[tuple[str, np.ndarray]]:
    """``[(feature, int64 raw ids)]`` of a body, strings hashed; ``FormatError`` when malformed or over
    the limits (``max_items`` values in all, ``max_string_length`` bytes per name or value)."""
    data, total = memoryview(body), len(body)
    if total < _HEAD.size:
        raise FormatError(f"ids.v1 body truncated at offset {total}: the header needs {_HEAD.size} bytes")
    magic, version, flags, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError(f"not an ids.v1 body: offset 0 holds {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION or flags:
        raise FormatError(f"ids.v1 header: version {version}, flags {flags} at offset 4; this server reads version {VERSION}, flags 0")
    at, out, seen = _HEAD.size, [], 0
    for b in range(count):
        if at + 2 > total:
            raise FormatError(f"ids.v1 body truncated at offset {total}: block {b} needs its name length at offset {at}")
        (length,) = _LENGTH.unpack_from(data, at)
        if not 0 < length <= max_string_length or at + 2 + length + _BLOCK.size > total:
            raise FormatError(
                f"ids.v1 block {b} at offset {at}: feature name of {length} bytes (1..{max_string_length}) "
                f"{'overruns the body' if 0 < length <= max_string_length else 'out of range'}"
            )
        try:
            feature = bytes(data[at + 2 : at + 2 + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"ids.v1 block {b}: feature name at offset {at + 2} is not valid UTF-8") from None
        at += 2 + length
        kind, n = _BLOCK.unpack_from(data, at)
        at += _BLOCK.size
        seen += n
        if seen > max_items:
            raise FormatError(f"ids.v1 block {b} ('{feature}'): more than {max_items} values in the request")
        width = 8 if kind == RAW_IDS else 4 if kind == STRINGS else 0
        if not width:
            raise FormatError(f"ids.v1 block {b} ('{feature}'): kind {kind} at offset {at - _BLOCK.size}; known kinds: 0 raw ids, 1 strings")
        if at + width * n > total:
            raise FormatError(f"ids.v1 body truncated at offset {total}: feature '{feature}' needs {width * n} bytes from offset {at}")
        if kind == RAW_IDS:
            out.append((feature, np.frombuffer(data, "<i8", n, at)))
            at += 8 * n
            continue
        lengths = np.frombuffer(data, "<u4", n, at)
        if n and int(lengths.max()) > max_string_length:
            bad = int(np.argmax(lengths > max_string_length))
            raise FormatError(f"feature '{feature}': value {bad} has {int(lengths[bad])} bytes, more than {max_string_length}")
        out.append((feature, _hash_block(data, at, n, total, feature)))
        at += 4 * n + int(lengths.sum(dtype=np.int64))
    if at != total:
        raise FormatError(f"ids.v1 body: {total - at} bytes after the last block (offset {at})")
    return out


def vectors(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    """``[count, dim]`` float32 vectors of a binary answer (its ``X-Embedding-Count``/``-Dim`` headers)."""
    return np.frombuffer(body, "<f4").reshape(int(headers["x-embedding-count"]), int(headers["x-embedding-dim"]))
