"""Raw request values to model inputs: the same hashing, vocabularies and dense transform as the data.

Sparse values: a string (an int is taken as its decimal string) is hashed by
``recsys.hashing.hash64_strings`` into its raw id; ``None`` and ``""`` are the missing value.
Index methods then look the raw id up in the artifact's vocabulary (a binary search over the
memory-mapped, id-sorted Arrow file): unseen ids give the OOV index 1, missing gives 0.
Single-valued fields take one value (missing: index 0 / the id of ``""``); multi-valued fields
take a list (a scalar is a list of one; missing elements are dropped) or, when weighted, an
object ``{value: weight}``. Dense values are raw numbers, transformed like the data
(``slog1p``: sign(x)·log1p(|x|)); missing (absent or null) gives 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.export.artifact import ArtifactError, Manifest
from recsys.features import MISSING_INDEX, OOV_INDEX
from recsys.hashing import hash64_str, hash64_strings

MISSING_ID = hash64_str("")
DENSE_TRANSFORMS = (None, "slog1p", "none")
RawValue = str | int | None
_SCALAR_HASH_MAX = 24  # up to this many values: hashed in Python


class RequestError(ValueError):
    """A request the model cannot answer (unknown feature, wrong type, bad value): a client error."""


class Vocabulary:
    """Raw id -> vocabulary index over an id-sorted, memory-mapped Arrow file."""

    def __init__(self, path: Path) -> None:
        batch = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all().combine_chunks().to_batches()
        self.ids = batch[0].column("id").to_numpy() if batch else np.zeros(0, np.int64)  # zero-copy views of the map
        self.index = batch[0].column("index").to_numpy() if batch else np.zeros(0, np.int32)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Index of each raw id: 2.. in the vocabulary, ``OOV_INDEX`` unseen, ``MISSING_INDEX`` missing."""
        out = self.lookup_present(ids)
        out[ids == MISSING_ID] = MISSING_INDEX
        return out

    def lookup_present(self, ids: np.ndarray) -> np.ndarray:
        """``lookup`` for ids known not to be the missing value (a few numpy calls, whatever the count)."""
        if not len(self.ids):
            return np.full(len(ids), OOV_INDEX, np.int64)
        pos = self.ids.searchsorted(ids)
        out = self.index.take(pos, mode="clip").astype(np.int64)
        out[self.ids.take(pos, mode="clip") != ids] = OOV_INDEX
        return out


def _hash(texts: list[str]) -> np.ndarray:
    """``hash64_strings`` of ``texts``; a few values are hashed in Python (cheaper than building an Arrow array)."""
    if len(texts) <= _SCALAR_HASH_MAX:
        return np.array([hash64_str(t) for t in texts], np.int64)
    return hash64_strings(texts)


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
        bad = {n: t for n, t in self.transforms.items() if t not in DENSE_TRANSFORMS}
        if bad:
            raise ArtifactError(f"{folder}: unknown dense transforms {bad}; this code knows {DENSE_TRANSFORMS}")
        self.any_weighted = any(f.weighted for f in manifest.context.features)
        self.position = {n: i for i, n in enumerate(self.sparse)}
        self.multi_valued = np.array([f.multi_valued for f in manifest.context.features], bool)
        self.id_scheme = id_scheme
        self.vocab: dict[str, Vocabulary] = {}
        if id_scheme == "index":
            missing = [n for n in self.sparse if n not in manifest.dataset.vocabularies]
            if missing:
                raise ArtifactError(f"{folder}: index method without vocabularies for {missing}")
            self.vocab = {n: Vocabulary(folder / manifest.dataset.vocabularies[n]) for n in self.sparse}

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
        try:
            feature = np.fromiter((position[f] for f, _ in pairs), np.int64, len(pairs))
        except (KeyError, TypeError):
            bad = next(f for f, _ in pairs if not isinstance(f, str) or f not in position)
            raise RequestError(f"unknown sparse feature {bad!r}; features: {', '.join(self.sparse)}") from None
        return feature, _hash([_text(f, v) for f, v in pairs])

    def pairs(self, pairs: Sequence[tuple[str, Any]]) -> tuple[KeyedJaggedTensor, np.ndarray, np.ndarray]:
        """KJT holding each ``(feature, raw value)`` pair as one bag of its feature, and each pair's
        ``(feature position, batch slot)``; vectorised over the pairs (one hash call, one lookup per
        feature present).

        Pairs are packed per feature: the k-th pair of a feature is bag k of that feature, so the
        batch size is the largest count of one feature (not the number of pairs) and the method
        pools ``features x that`` bags, most of them non-empty. The vector of pair i is row
        ``slot[i]`` of feature ``feature[i]``'s pooled output.
        """
        n = len(pairs)
        feature, raw = self.raw_pairs(pairs)
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
        if self.id_scheme == "index":
            missing = values == MISSING_ID
            vocab, names = self.vocab, self.sparse
            for j, a, b in zip(np.flatnonzero(counts).tolist(), starts[:-1][counts > 0].tolist(), starts[1:][counts > 0].tolist()):
                values[a:b] = vocab[names[j]].lookup_present(values[a:b])
            values[missing] = MISSING_INDEX
        if not present.all():
            values = values[present[order]]
        weights = torch.ones(len(values)) if self.any_weighted else None
        kjt = KeyedJaggedTensor(keys=self.sparse, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths.ravel()), weights=weights, stride=stride)
        return kjt, feature, slot

    def _build(self, cols: dict[str, _Column], batch: int) -> KeyedJaggedTensor:
        texts = [t for c in cols.values() for t in c.texts]
        raw = _hash(texts)
        parts, start = [], 0
        for name, col in cols.items():
            ids = raw[start : start + len(col.texts)]
            start += len(col.texts)
            parts.append(self.vocab[name].lookup(ids) if self.id_scheme == "index" else ids)
        values = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        lengths = np.array([n for c in cols.values() for n in c.lengths], np.int32)
        weights = torch.tensor([w for c in cols.values() for w in c.weights], dtype=torch.float32) if self.any_weighted else None
        return KeyedJaggedTensor(keys=list(cols), values=torch.from_numpy(values), lengths=torch.from_numpy(lengths), weights=weights, stride=batch)

    def dense_tensor(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """``[B, num_dense]`` transformed dense inputs; unknown fields or non-finite values are errors."""
        out = np.zeros((len(rows), len(self.dense)), np.float64)
        position = {n: i for i, n in enumerate(self.dense)}
        for r, row in enumerate(rows):
            for name, value in row.items():
                i = position.get(name)
                if i is None:
                    raise RequestError(f"unknown dense feature '{name}'; dense features: {', '.join(self.dense)}")
                if value is None:
                    continue
                out[r, i] = _number(f"dense feature '{name}'", value)
        for name, i in position.items():
            if self.transforms[name] == "slog1p":
                out[:, i] = np.sign(out[:, i]) * np.log1p(np.abs(out[:, i]))
        return torch.from_numpy(out.astype(np.float32))


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
