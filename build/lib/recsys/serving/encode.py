"""Raw request values to model inputs: the same hashing, vocabularies and dense transform as the data.

Sparse values: a string (an int is taken as its decimal string) is hashed by
``recsys.hashing.hash64_strings`` into its raw id; ``None`` and ``""`` are the missing value.
Index methods then look the raw id up in the artifact's vocabularies (one binary search over all
features' ids, copied at load from the id-sorted Arrow files): unseen ids give the OOV index 1,
missing gives 0.
Single-valued fields take one value (missing: index 0 / the id of ``""``); multi-valued fields
take a list (a scalar is a list of one; missing elements are dropped) or, when weighted, an
object ``{value: weight}``. Dense values are raw numbers, transformed as ``dataset.json`` records
(``recsys.data.transforms.apply_dense``: ``slog1p`` sign(x)·log1p(|x|), ``standardize`` with the
train mean and std, ``none``); missing (absent or null) gives 0. A dense column turned into
quantile buckets is a sparse feature: its raw number, given under ``dense``, becomes its bucket.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.transforms import apply_dense, bucket_of
from recsys.export.artifact import MANIFEST, ArtifactError, Manifest
from recsys.export.files import artifact_path, open_regular
from recsys.features import MISSING_INDEX, OOV_INDEX
from recsys.hashing import hash64_str, hash64_strings

MISSING_ID = hash64_str("")
DENSE_TRANSFORMS = (None, "slog1p", "none", "standardize")
RawValue = str | int | None
_SORTED_SEARCH = 48  # from this many ids, the vocabulary search runs over them sorted
_SCALAR_HASH_MAX = 16  # up to this many values: hashed in Python (measured break-even ~18)


class RequestError(ValueError):
    """A request the model cannot answer (unknown feature, wrong type, bad value): a client error."""


def _read_vocabulary(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def _longest_run(values: np.ndarray) -> int:
    """The most equal values in a row of a sorted array (1 when all differ)."""
    if len(values) < 2 or not (values[1:] == values[:-1]).any():
        return 1
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return int(np.diff(starts, append=len(values)).max())


class Vocabularies:
    """Every feature's vocabulary in one sorted array: ``(feature position, raw id) -> index`` for a
    whole request in one binary search, whatever the features.

    An entry's key is ``(feature << (64 - b)) | (id >> b)`` (the id as unsigned, ``b`` bits for the
    feature) with the id's low ``b`` bits beside it; keys sort by feature, then id, and key plus low
    bits give back the pair exactly. In memory: 8 + 1 + 4 bytes an entry (the files' maps are not kept).
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        parts = [_read_vocabulary(p) for p in reversed(paths)]  # maps, not read yet; popped (and let go) once copied
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


def _hash(texts: list[str], feature_of: Callable[[int], str] | None = None) -> np.ndarray:
    """``hash64_strings`` of ``texts``; a few values are hashed in Python (cheaper than building an Arrow array).

    A text UTF-8 cannot encode (a lone surrogate, e.g. JSON ``"\\ud800"``) is a ``RequestError``
    naming its feature (``feature_of(position)``)."""
    try:
        if len(texts) <= _SCALAR_HASH_MAX:
            return np.array([hash64_str(t) for t in texts], np.int64)
        return hash64_strings(texts)
    except UnicodeEncodeError:
        i = next(i for i, t in enumerate(texts) if not _encodable(t))
        where = f"feature {feature_of(i)!r}: " if feature_of is not None else ""
        raise RequestError(f"{where}value {texts[i][:64]!r} is not valid Unicode text "
                           "(it holds a lone surrogate, which UTF-8 cannot encode)") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(feature: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RequestError(f"feature '{feature}': values must be strings, integers or null, got {type(value).__name__}")


@dataclass
class _Column:
    """One sparse feature's values for a batch, before hashing."""

    texts: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


class Encoder:
    """Turns raw request values into the method's ``KeyedJaggedTensor`` and the dense tensor."""

    def __init__(self, folder: Path, manifest: Manifest, id_scheme: str) -> None:
        spec = {f.name: f for f in manifest.dataset.fields}
        self.sparse = [f.name for f in manifest.context.features]
        self.sparse_info = {f.name: f for f in manifest.context.features}
        self.dense = [f.name for f in manifest.dataset.fields if f.kind == "dense"]
        self.transforms = {name: spec[name].transform for name in self.dense}
        self.transform_params = {name: spec[name].transform_params for name in self.dense}
        self.buckets = {  # quantile-bucketed dense columns (sparse features): their edges
            f.name: (f.transform_params.edges or []) if f.transform_params else [] for f in manifest.dataset.fields
            if f.kind == "sparse" and f.transform == "quantile"
        }
        bad = {n: t for n, t in self.transforms.items() if t not in DENSE_TRANSFORMS}
        if bad:
            raise ArtifactError(f"{folder / MANIFEST}: unknown dense transforms {bad}; this code knows {DENSE_TRANSFORMS}")
        self.any_weighted = any(f.weighted for f in manifest.context.features)
        self.position = {n: i for i, n in enumerate(self.sparse)}
        self.multi_valued = np.array([f.multi_valued for f in manifest.context.features], bool)
        self.id_scheme = id_scheme
        self.vocabularies: Vocabularies | None = None  # index methods: all features' vocabularies, by position
        if id_scheme == "index":
            missing = [n for n in self.sparse if n not in manifest.dataset.vocabularies]
            if missing:
                raise ArtifactError(f"{folder / MANIFEST}: index method without vocabularies for {missing}")
            self.vocabularies = Vocabularies([artifact_path(folder, manifest.dataset.vocabularies[n]) for n in self.sparse])

    def _append(self, col: _Column, feature: str, value: Any) -> None:
        info = self.sparse_info[feature]
        if not info.multi_valued:
            if isinstance(value, (list, dict)):
                raise RequestError(f"feature '{feature}' is single-valued; give one value, not a {type(value).__name__}")
            col.texts.append(_text(feature, value))
            col.lengths.append(1)
            col.weights.append(1.0)
            return
        if isinstance(value, dict):
            if not info.weighted:
                raise RequestError(f"feature '{feature}' is not weighted; give a list of values, not an object")
            pairs = [(_text(feature, k), _weight(feature, w)) for k, w in value.items()]
        else:
            pairs = [(_text(feature, v), 1.0) for v in (value if isinstance(value, list) else [value])]
        pairs = [(t, w) for t, w in pairs if t]
        col.texts += [t for t, _ in pairs]
        col.weights += [w for _, w in pairs]
        col.lengths.append(len(pairs))

    def _empty(self, col: _Column) -> None:
        col.lengths.append(0)

    def kjt(self, rows: Sequence[Mapping[str, Any]], fill_missing: bool = True) -> KeyedJaggedTensor:
        """KJT of one row per mapping ``feature -> raw value(s)``; unknown features are errors.

        Absent features are the missing value (``fill_missing``) or empty bags.
        """
        cols = {n: _Column() for n in self.sparse}
        for row in rows:
            unknown = [k for k in row if k not in cols]
            if unknown:
                raise RequestError(f"unknown sparse feature(s) {unknown[:5]}; features: {', '.join(self.sparse)}")
            for name, col in cols.items():
                if name in row:
                    self._append(col, name, row[name])
                elif fill_missing:
                    self._append(col, name, None)
                else:
                    self._empty(col)
        return self._build(cols, len(rows))

    def raw_pairs(self, pairs: Sequence[tuple[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """``(feature position, raw id)`` of each ``(feature, raw value)`` pair; unknown features and
        values of the wrong type are ``RequestError``."""
        position = self.position
        if not pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        features, values = zip(*pairs)
        try:
            feature = np.fromiter(map(position.__getitem__, features), np.int64, len(features))
        except (KeyError, TypeError):
            bad = next(f for f in features if not isinstance(f, str) or f not in position)
            raise RequestError(f"unknown sparse feature {bad!r}; features: {', '.join(self.sparse)}") from None
        if set(map(type, values)) == {str}:
            return feature, _hash(list(values), features.__getitem__)
        return feature, _hash([_text(f, v) for f, v in zip(features, values)], features.__getitem__)

    def pairs(self, pairs: Sequence[tuple[str, Any]]) -> tuple[KeyedJaggedTensor, np.ndarray, np.ndarray]:
        """KJT holding each ``(feature, raw value)`` pair as one bag of its feature, and each pair's
        ``(feature position, batch slot)``; vectorised over the pairs (one hash call, one lookup per
        feature present).

        Pairs are packed per feature: the k-th pair of a feature is bag k of that feature, so the
        batch size is the largest count of one feature (not the number of pairs) and the method
        pools ``features x that`` bags, most of them non-empty. The vector of pair i is row
        ``slot[i]`` of feature ``feature[i]``'s pooled output.
        """
        return self.ids_kjt(*self.raw_pairs(pairs))

    def ids_kjt(self, feature: np.ndarray, raw: np.ndarray) -> tuple[KeyedJaggedTensor, np.ndarray, np.ndarray]:
        """``pairs`` of ``(feature position, raw id)`` arrays (positions known to be valid)."""
        n = len(feature)
        order = np.argsort(feature, kind="stable")  # feature-major, request order within a feature
        counts = np.bincount(feature, minlength=len(self.sparse))
        starts = np.zeros(len(self.sparse) + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        slot = np.empty(n, np.int64)
        slot[order] = np.arange(n) - starts[feature[order]]
        stride = max(int(counts.max()), 1)
        present = np.ones(n, bool)
        if self.multi_valued.any():
            present = ~(self.multi_valued[feature] & (raw == MISSING_ID))  # a missing multi-valued value: an empty bag
        lengths = np.zeros((len(self.sparse), stride), np.int32)
        lengths[feature[present], slot[present]] = 1
        values = raw[order]
        if self.vocabularies is not None:
            values = self.vocabularies.lookup(feature[order], values)
        if not present.all():
            values = values[present[order]]
        weights = torch.ones(len(values)) if self.any_weighted else None
        kjt = KeyedJaggedTensor(keys=self.sparse, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths.ravel()), weights=weights, stride=stride)
        return kjt, feature, slot

    def _build(self, cols: dict[str, _Column], batch: int) -> KeyedJaggedTensor:
        texts = [t for c in cols.values() for t in c.texts]
        values = _hash(texts, lambda i: [n for n, c in cols.items() for _ in c.texts][i]).astype(np.int64, copy=False)
        if self.vocabularies is not None:
            feature = np.repeat(np.array([self.position[n] for n in cols], np.int64), [len(c.texts) for c in cols.values()])
            values = self.vocabularies.lookup(feature, values)
        lengths = np.array([n for c in cols.values() for n in c.lengths], np.int32)
        weights = torch.tensor([w for c in cols.values() for w in c.weights], dtype=torch.float32) if self.any_weighted else None
        return KeyedJaggedTensor(keys=list(cols), values=torch.from_numpy(values), lengths=torch.from_numpy(lengths), weights=weights, stride=batch)

    def dense_tensor(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """``[B, num_dense]`` transformed dense inputs; unknown fields or non-finite values are errors.

        Values of bucketed columns (sparse features) are left to ``with_buckets``.
        """
        out = np.full((len(rows), len(self.dense)), np.nan, np.float64)
        position = {n: i for i, n in enumerate(self.dense)}
        for r, row in enumerate(rows):
            for name, value in row.items():
                i = position.get(name)
                if i is None:
                    if name in self.buckets:
                        continue
                    known = ", ".join([*self.dense, *self.buckets])
                    raise RequestError(f"unknown dense feature {name!r}; dense features: {known}")
                if value is None:
                    continue
                out[r, i] = _number(f"dense feature '{name}'", value)
        result = np.empty(out.shape, np.float32)
        for name, i in position.items():
            result[:, i] = apply_dense(out[:, i], self.transforms[name], self.transform_params[name])
        return torch.from_numpy(result)

    def with_buckets(self, sparse: Sequence[Mapping[str, Any]], dense: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Sparse rows with each bucketed column's raw number (from the dense rows) as its bucket's value."""
        if not self.buckets:
            return [dict(s) for s in sparse]
        rows = []
        for s, d in zip(sparse, dense):
            row = dict(s)
            for name, edges in self.buckets.items():
                if d.get(name) is not None:
                    bucket = bucket_of(np.array([_number(f"dense feature '{name}'", d[name])]), edges)
                    row[name] = str(int(bucket[0]))
            rows.append(row)
        return rows


def _number(what: str, value: Any) -> float:
    """``value`` as a finite float, else ``RequestError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{what}: expected a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        raise RequestError(f"{what}: number out of range") from None
    if not math.isfinite(x):
        raise RequestError(f"{what}: value must be finite, got {x}")
    return x


def _weight(feature: str, w: Any) -> float:
    return _number(f"feature '{feature}' weight", w)
