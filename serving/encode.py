"""Raw request values to model inputs: the same hashing, vocabularies and dense transform as the data.

Sparse values: a string (an int is taken as its decimal string) is hashed by
``recsys.hashing.hash64_strings`` into its raw id; ``None`` and ``""`` are the missing value.
Index methods then look the raw id up in the artifact's vocabularies (``recsys.serving.vocabulary``:
one hash-table probe of the whole request, built at load from the Arrow files): unseen ids give the
OOV index 1, missing gives 0.
Single-valued fields take one value (missing: index 0 / the id of ``""``); multi-valued fields
take a list (a scalar is a list of one; missing elements are dropped) or, when weighted, an
object ``{value: weight}``. Dense values are raw numbers, transformed as ``dataset.json`` records
(``recsys.data.transforms.apply_dense``: ``slog1p`` sign(x)·log1p(|x|), ``standardize`` with the
train mean and std, ``none``); missing (absent or null) gives 0. A dense column turned into
quantile buckets is a sparse feature: its raw number, given under ``dense``, becomes its bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.transforms import apply_dense, bucket_of
from recsys.export.artifact import MANIFEST, ArtifactError, Manifest
from recsys.export.files import artifact_path
from recsys.hashing import hash64_str, hash64_strings
from recsys.serving.vocabulary import MISSING_ID, Vocabularies

DENSE_TRANSFORMS = (None, "slog1p", "none", "standardize")
RawValue = str | int | None
_SCALAR_HASH_MAX = 16  # up to this many values: hashed in Python (measured break-even ~18)


class RequestError(ValueError):
    """A request the model cannot answer (unknown feature, wrong type, bad value): a client error."""


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
        raise RequestError(
            f"{where}value {texts[i][:64]!r} is not valid Unicode text (it holds a lone surrogate, which UTF-8 cannot encode)"
        ) from None


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
            f.name: (f.transform_params.edges or []) if f.transform_params else []
            for f in manifest.dataset.fields
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
        kjt = KeyedJaggedTensor(
            keys=self.sparse, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths.ravel()), weights=weights, stride=stride
        )
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
