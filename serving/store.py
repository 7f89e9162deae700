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
from serving.direct import DirectLookup
from serving.encode import Encoder, RequestError
from serving.source import resolve_source

Row = Mapping[str, Any]
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # a one-off torchrec tracing notice


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

    def module_embeddings(self, pairs: Sequence[tuple[str, Any]]) -> np.ndarray:
        """``embeddings`` computed by the method's module (what ``self.direct`` must equal)."""
        kjt, feature, slot = self.encoder.pairs(pairs)
        with torch.inference_mode():
            pooled = _pooled(self.embedding(kjt))
        if self.uniform and pooled.keys() == self.features:
            return pooled.values().view(-1, len(self.features), self.width).numpy()[slot, feature]
        out = np.zeros((len(pairs), self.width), np.float32)
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
        dense = self.encoder.dense_tensor([r.get("dense") or {} for r in requests])
        kjt = self.encoder.kjt([r.get("sparse") or {} for r in requests])
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
                {"name": f.name, "multi_valued": f.multi_valued, "weighted": f.weighted, "dim": self.widths[f.name]}
                for f in m.context.features
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

