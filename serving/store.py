"""The in-process lookup layer: a verified artifact answering embedding and CTR-score queries.

Example:
    >>> store = Store.open("artifacts/dlrm-hash-int8")          # or "models:/ctr@champion"
    >>> store.embeddings([("C1", "68fd1e64"), ("C2", None)]).shape
    (2, 16)
    >>> store.score([{"dense": {"I1": 3}, "sparse": {"C1": "68fd1e64"}}])
    array([0.23], dtype=float32)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.export.loader import LoadedArtifact, load_artifact
from recsys.hashing import hash64_strings
from recsys.serving.compiled import kernel
from recsys.serving.direct import DirectLookup
from recsys.serving.encode import Encoder, RequestError
from recsys.serving.source import resolve_source

Row = Mapping[str, Any]
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # a one-off torchrec tracing notice


def raw_ids(values: np.ndarray | Sequence[str | None]) -> np.ndarray:
    """int64 raw ids of an integer array (as given; uint64 viewed), or of strings (hashed)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        if values.dtype.itemsize != 8:
            return values.astype(np.int64)
        return np.ascontiguousarray(values).view(np.int64)
    texts = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if any(v is not None and not isinstance(v, str) for v in texts):
        bad = next(v for v in texts if v is not None and not isinstance(v, str))
        raise RequestError(f"values must be an integer array of raw ids or strings, got a {type(bad).__name__}")
    return hash64_strings(texts)


def _pooled(out: Any) -> KeyedTensor:
    return out.wait() if hasattr(out, "wait") else out


class Store:
    """Lookups over one loaded artifact; thread-safe for concurrent readers (eval, no grad)."""

    def __init__(self, loaded: LoadedArtifact, version: str = "") -> None:
        self.loaded = loaded
        self.manifest = loaded.manifest
        self.version = version or self.manifest.manifest_sha256[:12]
        self.model = loaded.model
        self.embedding = loaded.embedding
        self.encoder = Encoder(loaded.folder, self.manifest, self.manifest.method.id_scheme)
        self.features = list(self.encoder.sparse)
        self.dense_features = list(self.encoder.dense)
        self.widths = {n: int(c.embedding_dim) for c in self.embedding.embedding_bag_configs() for n in c.feature_names}
        self.width = max(self.widths.values())
        self.uniform = len(set(self.widths.values())) == 1
        self.direct = DirectLookup.build(self.embedding, self.encoder)  # None: every lookup runs the module
        self.kernel = kernel(self.direct)  # the compiled id path (recsys.serving.compiled); None: numpy
        self.loaded_at = time.time()

    @classmethod
    def open(cls, source: str | Path, cache_dir: str | Path | None = None) -> "Store":
        """Load and verify an artifact from a folder or ``models:/NAME@ALIAS`` (or ``/VERSION``)."""
        version, folder = resolve_source(str(source), cache_dir)
        return cls(load_artifact(folder), version)

    @torch.inference_mode()
    def pooled(self, kjt: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """The method's pooled vector of each feature, ``[B, d_f]``."""
        return _pooled(self.embedding(kjt)).to_dict()

    def embeddings(self, pairs: Sequence[tuple[str, Any]]) -> np.ndarray:
        """``[n, D]`` float32 vectors of ``(feature, raw value)`` pairs (zero-padded when widths differ)."""
        if not pairs:
            return np.zeros((0, self.width), np.float32)
        if self.direct is not None:
            return self.direct(pairs)
        return self.module_embeddings(pairs)

    def lookup(self, feature: str, values: np.ndarray | Sequence[str | None]) -> np.ndarray:
        """``[n, D]`` float32 vectors of one feature's values, for rankers embedding the lookup layer.

        ``values``: an integer array of raw ids (``recsys.hashing.hash64_strings`` of the values, as
        the Parquet shards hold them; uint64 is taken as its int64 view), or strings (a list or a
        str/object array; ``None`` and ``""`` are missing), hashed here. Bit-identical to
        ``embeddings`` of the same pairs and to the HTTP answers.
        """
        position = self.encoder.position.get(feature) if isinstance(feature, str) else None
        if position is None:
            raise RequestError(f"unknown sparse feature {feature!r}; features: {', '.join(self.features)}")
        raw = raw_ids(values)
        return self.lookup_ids(np.full(len(raw), position, np.int64), raw)

    def lookup_ids(self, feature: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """``[n, D]`` vectors of ``(feature position, raw id)`` int64 arrays (positions valid)."""
        if not len(raw):
            return np.zeros((0, self.width), np.float32)
        if self.kernel is not None:
            out = np.empty((len(raw), self.width), np.float32)
            self.kernel.fill(np.ascontiguousarray(feature, np.int64), np.ascontiguousarray(raw, np.int64), out)
            return out
        if self.direct is not None:
            return self.direct.from_ids(feature, raw)
        return self._module_vectors(*self.encoder.ids_kjt(feature, raw))

    def lookup_blocks(self, blocks: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
        """The vectors of ``[(feature, int64 raw ids)]`` blocks, in order (an ids.v1 request)."""
        position = self.encoder.position
        unknown = [f for f, _ in blocks if f not in position]
        if unknown:
            raise RequestError(f"unknown sparse feature {unknown[0]!r}; features: {', '.join(self.features)}")
        if len(blocks) == 1:
            ((name, raw),) = blocks
            return self.lookup_ids(np.full(len(raw), position[name], np.int64), raw)
        feature = np.repeat(np.array([position[f] for f, _ in blocks], np.int64), [len(r) for _, r in blocks])
        return self.lookup_ids(feature, np.concatenate([r for _, r in blocks]) if blocks else np.zeros(0, np.int64))

    def module_embeddings(self, pairs: Sequence[tuple[str, Any]]) -> np.ndarray:
        """``embeddings`` computed by the method's module (what ``self.direct`` must equal)."""
        return self._module_vectors(*self.encoder.pairs(pairs))

    def _module_vectors(self, kjt: KeyedJaggedTensor, feature: np.ndarray, slot: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            pooled = _pooled(self.embedding(kjt))
        if self.uniform and pooled.keys() == self.features:
            return pooled.values().view(-1, len(self.features), self.width).numpy()[slot, feature]
        out = np.zeros((len(feature), self.width), np.float32)
        for name, vectors in pooled.to_dict().items():
            idx = np.flatnonzero(feature == self.encoder.position[name])
            out[idx, : vectors.shape[1]] = vectors.numpy()[slot[idx]]
        return out

    def entities(self, items: Sequence[Row]) -> list[dict[str, np.ndarray]]:
        """Per entity (``feature -> raw value(s)``), the vector of each feature it names."""
        if not items:
            return []
        for item in items:
            for name in item:
                self._feature(name)
        by_feature = {k: v.numpy() for k, v in self.pooled(self.encoder.kjt(items, fill_missing=False)).items()}
        return [{name: by_feature[name][i] for name in item} for i, item in enumerate(items)]

    def entity(self, features: Row) -> dict[str, np.ndarray]:
        """The vector of each feature of one entity."""
        return self.entities([features])[0]

    def score(self, requests: Sequence[Row]) -> np.ndarray:
        """CTR probabilities of requests ``{"dense": {...}, "sparse": {...}}`` (float32)."""
        if not requests:
            return np.zeros(0, np.float32)
        for r in requests:
            if not isinstance(r, Mapping) or set(r) - {"dense", "sparse"}:
                raise RequestError("each request is an object with optional 'dense' and 'sparse' objects")
        dense_rows = [r.get("dense") or {} for r in requests]
        dense = self.encoder.dense_tensor(dense_rows)
        kjt = self.encoder.kjt(self.encoder.with_buckets([r.get("sparse") or {} for r in requests], dense_rows))
        return self.score_batch(dense, kjt)

    @torch.inference_mode()
    def score_batch(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> np.ndarray:
        """Probabilities from already-encoded inputs (transformed dense, method ids)."""
        return torch.sigmoid(self.model(dense, kjt)).numpy().astype(np.float32)

    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "version": self.version,
            "format_version": m.format_version,
            "created": m.created,
            "dataset": m.dataset.name,
            "method": m.method.name,
            "served_method": m.method.served,
            "options": m.method.options,
            "id_scheme": m.method.id_scheme,
            "dtype": m.dtype,
            "model": m.model.get("name"),
            "embedding_dim": m.context.embedding_dim,
            "sparse_features": [
                {"name": f.name, "multi_valued": f.multi_valued, "weighted": f.weighted, "dim": self.widths[f.name]} for f in m.context.features
            ],
            "dense_features": self.dense_features,
            "memory_bytes": m.method.memory_bytes,
            "metrics": m.metrics,
            "loaded_at": self.loaded_at,
        }

    def _feature(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.encoder.sparse_info:
            raise RequestError(f"unknown sparse feature {name!r}; features: {', '.join(self.features)}")
        return name
