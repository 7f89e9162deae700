"""The artifact's vocabularies in memory: ``(feature position, raw id) -> index`` for a whole request.

``Vocabularies`` (served): every feature's ids in one bucketed hash table of numpy arrays,
probed for a whole request at once in a fixed number of numpy calls. Feature ``f`` owns the
buckets ``start[f] .. start[f] + buckets[f]`` of ``BUCKET`` slots each (one 64-byte line of ids);
an id's bucket is ``start[f] + ((id * C mod 2^64) >> 32) * buckets[f] >> 32``. A bucket holds
its first ``BUCKET`` entries; the rest of a crowded bucket's entries go to a small overflow array
sorted by id. A lookup reads each id's bucket (one gather), finds the matching slot with a few
whole-array operations (no Python loop per id), then its index (a second gather); an id not in
its bucket is unseen unless the bucket is full, in which case the overflow array is searched.
The work per id is two cache lines whatever the vocabulary size, where a binary search over all
entries touches about 20.

``SortedVocabularies``: the previous index, one sorted key array searched with ``searchsorted``
(the reference the tests and ``bench.vocab_bench`` compare with).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys.export.artifact import ArtifactError
from recsys.export.files import open_regular
from recsys.features import MISSING_INDEX, OOV_INDEX
from recsys.hashing import hash64_str

MISSING_ID = hash64_str("")
BUCKET = 8  # slots of a bucket (8 int64 ids: one cache line)
LOAD = 0.75  # entries per slot (buckets = entries / (BUCKET * LOAD)); at 0.75 about 5% of the entries overflow
_SLOT = np.uint64(0x0001020304050607)  # (x * this) >> 56 is c for x = 256**c: the byte a match set, as a number
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # spreads structured ids (small integers, near values) over the slots
_SORTED_SEARCH = 48  # SortedVocabularies: from this many ids, the search runs over them sorted


def read_vocabulary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, index)`` of an id-sorted vocabulary file (views of its memory map, opened as a
    regular file without blocking: ``recsys.export.files``)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    try:
        batch = pa.ipc.open_file(pa.py_buffer(data)).read_all().combine_chunks().to_batches()
        if not batch:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        ids, index = batch[0].column("id"), batch[0].column("index")
        if not (pa.types.is_int64(ids.type) and pa.types.is_int32(index.type)):
            raise TypeError(f"columns id {ids.type}, index {index.type}; expected int64 and int32")
        return ids.to_numpy(), index.to_numpy()
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a vocabulary (Arrow IPC file with int64 'id' and int32 'index' columns): {exc}") from None


def _home(ids: np.ndarray, size: np.ndarray | int) -> np.ndarray:
    """Each id's home slot in a region of ``size`` slots (multiplicative hash, then a fast range reduction)."""
    h = ids.view(np.uint64) * _MULTIPLIER
    h >>= np.uint64(32)
    h *= np.asarray(size, np.uint64)
    h >>= np.uint64(32)
    return h.view(np.int64)


def _longest_run(values: np.ndarray) -> int:
    """The most equal values in a row of a sorted array (1 when all differ)."""
    if len(values) < 2 or not (values[1:] == values[:-1]).any():
        return 1
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return int(np.diff(starts, append=len(values)).max())


def _unused_id(arrays: list[np.ndarray]) -> int:
    """An id no vocabulary holds (marks empty slots; asking for it finds no entry: unseen)."""
    n = sum(len(a) for a in arrays)
    small = np.concatenate([a[(a >= 0) & (a <= n)] for a in arrays]) if arrays else np.zeros(0, np.int64)
    return int(np.flatnonzero(~np.isin(np.arange(n + 1), small))[0])  # of 0..n, at least one is unused


def _last_of_equal(ids: np.ndarray) -> np.ndarray:
    """Positions keeping one entry per distinct id: its last in file order (what the sorted search answered)."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    last = np.ones(len(s), bool)
    last[:-1] = s[1:] != s[:-1]
    return np.sort(order[last])


class Vocabularies:
    """Every feature's vocabulary in one bucketed hash table (see the module docstring).

    In memory: 12 bytes a slot (int64 id, int32 index; ``1 / LOAD`` slots an entry), a byte a bucket,
    14 bytes per overflow entry.
    """

    def __init__(self, paths: Sequence[Path], load: float = LOAD) -> None:
        starts, counts, parts, total = [], [], [], 0
        self.max_index: list[int] = []  # the largest index of each feature (-1: an empty vocabulary)
        for path in paths:
            ids, index = read_vocabulary(path)
            if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # repeated ids: keep what the sorted search answered
                keep = _last_of_equal(ids)
                ids, index = ids[keep], index[keep]
            ids, index = np.array(ids, np.int64), np.array(index, np.int32)  # copies: the file's map is let go
            count = max(1, int(np.ceil(len(ids) / (BUCKET * load))))
            bucket = _home(ids, count)
            order = np.argsort(bucket, kind="stable")
            bucket, ids, index = bucket[order], ids[order], index[order]
            first = np.searchsorted(bucket, bucket)  # where each entry's bucket run begins
            rank = np.arange(len(ids), dtype=np.int64) - first
            parts.append((ids, index, bucket, rank))
            starts.append(total)
            counts.append(count)
            self.max_index.append(int(index.max()) if len(index) else -1)
            total += count
        self.empty = _unused_id([p[0] for p in parts])
        self.ids = np.full(total * BUCKET, self.empty, np.int64)
        self.index = np.full(total * BUCKET, OOV_INDEX, np.int32)  # an empty slot reads as unseen
        over = []
        for f, (ids, index, bucket, rank) in enumerate(parts):
            near = rank < BUCKET
            slot = (starts[f] + bucket[near]) * BUCKET + rank[near]
            self.ids[slot], self.index[slot] = ids[near], index[near]
            over.append((np.full(int((~near).sum()), f, np.int16), ids[~near], index[~near]))
        self.buckets = self.ids.reshape(total, BUCKET)
        self.full = (self.buckets != self.empty).all(axis=1)  # a bucket with an empty slot never overflowed
        self.start = np.array(starts, np.int64)
        self.count = np.array(counts, np.uint64)
        empty = [(np.zeros(0, np.int16), np.zeros(0, np.int64), np.zeros(0, np.int32))]
        over_feature, over_ids, over_index = (np.concatenate(c) for c in zip(*(over or empty)))
        order = np.argsort(over_ids, kind="stable")
        self.over_ids, self.over_feature, self.over_index = over_ids[order], over_feature[order], over_index[order]  # by id
        self.over_run = _longest_run(self.over_ids)  # one id may overflow in several features
        self.entries = sum(len(p[0]) for p in parts)

    @property
    def nbytes(self) -> int:
        """Bytes of the index in memory."""
        return self.ids.nbytes + self.index.nbytes + self.full.nbytes + self.over_ids.nbytes + self.over_feature.nbytes + self.over_index.nbytes

    def lookup_present(self, feature: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Index of each ``(feature position, raw id)``: 2.. in the vocabulary, ``OOV_INDEX`` unseen
        (ids known not to be the missing value)."""
        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return np.zeros(0, np.int64)
        bucket = _home(ids, self.count[feature])
        bucket += self.start[feature]
        rows = self.buckets.take(bucket, axis=0)
        match = (rows == ids[:, None]).view(np.uint64).ravel()  # byte c is 1 where slot c holds the id
        match *= _SLOT
        match >>= np.uint64(56)
        match &= np.uint64(BUCKET - 1)  # several matches (only ever for the empty marker) land on a slot checked below
        slot = bucket * BUCKET
        slot += match.view(np.int64)
        out = self.index.take(slot).astype(np.int64)
        found = self.ids.take(slot) == ids
        if found.all():
            return out
        miss = np.flatnonzero(~found)
        out[miss] = OOV_INDEX
        if len(self.over_ids):
            full = self.full.take(bucket[miss])
            if full.any():
                m = miss[full]
                out[m] = self._overflow(feature[m], ids[m])
        return out

    def _overflow(self, feature: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The indices of ids that did not fit in their bucket (``OOV_INDEX`` when not there either)."""
        out = np.full(len(ids), OOV_INDEX, np.int64)
        pos = np.searchsorted(self.over_ids, ids)
        last = len(self.over_ids) - 1
        for k in range(self.over_run):  # the entries of one id (in several features) lie side by side
            at = np.minimum(pos + k, last)
            hit = (self.over_ids[at] == ids) & (self.over_feature[at] == feature)
            out[hit] = self.over_index[at[hit]]
        return out

    def lookup(self, feature: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``lookup_present`` with the missing value mapped to ``MISSING_INDEX``."""
        out = self.lookup_present(feature, ids)
        out[ids == MISSING_ID] = MISSING_INDEX
        return out


class SortedVocabularies:
    """The previous index: every feature's vocabulary in one sorted array: ``(feature position, raw id) -> index`` for a
    whole request in one binary search, whatever the features.

    An entry's key is ``(feature << (64 - b)) | (id >> b)`` (the id as unsigned, ``b`` bits for the
    feature) with the id's low ``b`` bits beside it; keys sort by feature, then id, and key plus low
    bits give back the pair exactly. In memory: 8 + 1 + 4 bytes an entry (the files' maps are not kept).
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        parts = [read_vocabulary(p) for p in reversed(paths)]  # maps, not read yet; popped (and let go) once copied
        self.bits = max(1, (len(paths) - 1).bit_length())
        self.shift = np.uint64(64 - self.bits)
        self.low_mask = np.uint64((1 << self.bits) - 1)
        total = sum(len(ids) for ids, _ in parts)
        self.keys = np.empty(total, np.uint64)
        self.low = np.empty(total, np.min_scalar_type((1 << self.bits) - 1))
        self.index = np.empty(total, np.int32)
        self.run = 1  # the most entries sharing one key (ids equal but for their low bits)
        self.max_index: list[int] = []  # the largest index of each feature (-1: an empty vocabulary)
        start = 0
        for f in range(len(paths)):
            ids, index = parts.pop()
            n, split = len(ids), int(ids.searchsorted(0))  # signed order -> unsigned: the negative ids go last
            u, idx = self.keys[start : start + n], self.index[start : start + n]
            u[: n - split], u[n - split :] = ids[split:].view(np.uint64), ids[:split].view(np.uint64)
            idx[: n - split], idx[n - split :] = index[split:], index[:split]
            np.bitwise_and(u, self.low_mask, out=self.low[start : start + n], casting="unsafe")
            u >>= np.uint64(self.bits)
            u |= np.uint64(f) << self.shift
            self.run = max(self.run, _longest_run(u))
            self.max_index.append(int(idx.max()) if n else -1)
            start += n
            del ids, index

    def lookup_present(self, feature: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Index of each ``(feature position, raw id)``: 2.. in the vocabulary, ``OOV_INDEX`` unseen
        (ids known not to be the missing value; a few numpy calls for the whole request)."""
        out = np.full(len(ids), OOV_INDEX, np.int64)
        if not len(self.keys) or not len(ids):
            return out
        u = np.ascontiguousarray(ids, np.int64).view(np.uint64)
        key = (feature.astype(np.uint64) << self.shift) | (u >> np.uint64(self.bits))
        low = (u & self.low_mask).astype(self.low.dtype)
        if len(key) < _SORTED_SEARCH:
            pos = self.keys.searchsorted(key)
        else:  # ascending queries reuse the previous search's bounds: fewer cache misses in a large array
            order = key.argsort()
            pos = np.empty(len(key), np.int64)
            pos[order] = self.keys.searchsorted(key[order])
        last = len(self.keys) - 1
        for k in range(self.run):
            at = np.minimum(pos + k, last) if k else np.minimum(pos, last, out=pos)
            hit = (self.keys.take(at) == key) & (self.low.take(at) == low)
            out[hit] = self.index.take(at[hit])
        return out

    def lookup(self, feature: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``lookup_present`` with the missing value mapped to ``MISSING_INDEX``."""
        out = self.lookup_present(feature, ids)
        out[ids == MISSING_ID] = MISSING_INDEX
        return out
