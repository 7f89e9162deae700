"""Single-value lookups read straight from the served tables: numpy gathers, no torch per request.

A ``(feature, value)`` pair is one bag holding one id (or none: a missing multi-valued value), so
for the methods whose module is one stock table per feature (``full``: the vocabulary index,
``hash``: the salted bucket of the raw id) the pooled vector is that table's row, decoded the way
fbgemm decodes it: fp32/fp16 rows as stored, int8/int4 rows as ``scale * q + bias`` (fp16 scale
and bias; the product is exact in float32, so one rounding, as fbgemm's fused multiply-add).
``DirectLookup.build`` returns ``None`` for anything else (other methods, weighted or
max-pooled features, mixed widths, other dtypes) and the store runs the method's module.

Going through torchrec costs ~0.3 ms a request whatever its size (KeyedJaggedTensor bookkeeping,
the fbgemm call); this costs a fixed number of numpy calls a request: one vocabulary probe for
all pairs (``recsys.serving.vocabulary.Vocabularies``) and, for quantized tables (which fbgemm keeps in one
buffer), one gather through a byte-offset view of that buffer; float tables are read with one
gather per feature present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from numpy.lib.array_utils import byte_bounds
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import (
    EmbeddingBagCollection as QuantEmbeddingBagCollection,
)

from recsys.embeddings.full import FullEmbedding
from recsys.embeddings.hashtrick import HashEmbedding
from recsys.hashing import bucket_per_value_np, salt_for
from recsys.serving.encode import MISSING_ID, Encoder

_POOLINGS = (PoolingType.SUM, PoolingType.MEAN)  # of one row: the row itself
_QBITS = {"INT8": 8, "INT4": 4}


@dataclass(frozen=True)
class _Layout:
    """How one stored row decodes: float rows, or quantized bytes with a trailing/leading fp16 scale and bias."""

    bits: int  # 0: float rows (fp32/fp16)
    q_offset: int = 0
    sb_offset: int = 0


def _float_tables(ebc: EmbeddingBagCollection) -> dict[str, np.ndarray]:
    return {name: bag.weight.detach().numpy() for name, bag in ebc.embedding_bags.items()}


def _quant_tables(ebc: QuantEmbeddingBagCollection, dim: int) -> tuple[dict[str, np.ndarray], _Layout, np.ndarray | None] | None:
    """Per table, its rows as stored (``[rows, row bytes]`` uint8, or fp16/fp32 values), their layout,
    and the one byte buffer holding every table (``None`` when they are spread over several)."""
    tables: dict[str, np.ndarray] = {}
    layouts = set()
    storages = {}
    for tbe in ebc._emb_modules:
        full_rows = tbe.split_embedding_weights_with_scale_bias(split_scale_bias_mode=0)
        split = tbe.split_embedding_weights_with_scale_bias(split_scale_bias_mode=1)
        for (name, rows, d, ty, _), (row, _, _), (q, sb, _) in zip(tbe.embedding_specs, full_rows, split):
            if d != dim:
                return None
            storages[row.untyped_storage().data_ptr()] = row.untyped_storage()
            if ty.name in ("FP32", "FP16"):
                tables[name] = row.view(torch.float32 if ty.name == "FP32" else torch.float16)[:, :dim].numpy()
                layouts.add(_Layout(0))
            elif ty.name in _QBITS and sb is not None and rows > 0:
                base = row.data_ptr()
                tables[name] = row.numpy()
                layouts.add(_Layout(_QBITS[ty.name], q.data_ptr() - base, sb.data_ptr() - base))
            else:
                return None
    if len(layouts) != 1:
        return None
    buffer = None
    if len(storages) == 1:
        (storage,) = storages.values()
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),)).numpy()
    return tables, layouts.pop(), buffer


def _window(tables: list[np.ndarray], buffer: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(window, start, stride)`` reading any table's row from the one ``buffer`` holding them all:
    row ``r`` of table ``j`` is ``window[start[j] + r * stride[j]]`` (stored bytes); ``None`` when the
    tables do not all lie in ``buffer`` with contiguous rows."""
    if buffer is None or not len(buffer):
        return None
    base, end = byte_bounds(buffer)
    starts, strides = [], []
    for t in tables:
        lo, hi = byte_bounds(t)
        if t.ndim != 2 or t.strides[1] != t.itemsize or t.strides[0] < t.shape[1] * t.itemsize or lo < base or hi > end:
            return None
        starts.append(lo - base)
        strides.append(t.strides[0])
    width = tables[0].shape[1] * tables[0].itemsize
    # a sliding view: one row per byte offset (indexed with [], which copies only the rows asked; take would copy it all)
    window = np.lib.stride_tricks.as_strided(buffer, shape=(len(buffer) - width + 1, width), strides=(1, 1), writeable=False)
    return window, np.array(starts, np.int64), np.array(strides, np.int64)


def _runs(feature: np.ndarray) -> list[tuple[int, slice]]:
    """``(feature position, slice)`` of each run of equal values of a sorted ``feature``."""
    edges = [0, *(np.flatnonzero(feature[1:] != feature[:-1]) + 1).tolist(), len(feature)]
    return [(int(feature[a]), slice(a, b)) for a, b in pairwise(edges)]


def _sorted_by_feature(feature: np.ndarray) -> np.ndarray | None:
    """The stable order grouping ``feature`` by value, ``None`` when it is already grouped."""
    if len(feature) < 2 or (feature[1:] >= feature[:-1]).all():
        return None
    return np.argsort(feature, kind="stable")


class DirectLookup:
    """``[n, D]`` float32 vectors of ``(feature, raw value)`` pairs, equal to the module's pooled output."""

    def __init__(self, encoder: Encoder, module: Any, tables: list[np.ndarray], layout: _Layout, dim: int, buffer: np.ndarray | None = None) -> None:
        self.encoder = encoder
        self.tables = tables  # by feature position
        self.layout = layout
        self.dim = dim
        self.hashed = isinstance(module, HashEmbedding)
        self.vocabularies = None if self.hashed else encoder.vocabularies  # None: rows are hash buckets
        names = encoder.sparse
        if self.hashed:
            self.salts = np.array([salt_for(n) for n in names], np.int64)
            self.num_rows = np.array([module.rows[n] for n in names], np.int64)
        self.gather_dtype = tables[0].dtype if layout.bits == 0 else np.uint8
        self.row_width = tables[0].shape[1]
        self.window = _window(tables, buffer)  # None: one gather per feature present

    @classmethod
    def build(cls, module: Any, encoder: Encoder) -> DirectLookup | None:
        """The direct reader of ``module`` (the served method), or ``None`` where it does not apply."""
        if type(module) not in (FullEmbedding, HashEmbedding) or encoder.any_weighted:
            return None
        ebc = module.ebc
        configs = ebc.embedding_bag_configs()
        if any(len(c.feature_names) != 1 or c.feature_names[0] != c.name or c.pooling not in _POOLINGS for c in configs):
            return None
        dims = {int(c.embedding_dim) for c in configs}
        if len(dims) != 1 or {c.name for c in configs} != set(encoder.sparse):
            return None
        dim = dims.pop()
        buffer = None
        if type(ebc) is EmbeddingBagCollection and not ebc.is_weighted():
            tables, layout = _float_tables(ebc), _Layout(0)
        elif type(ebc) is QuantEmbeddingBagCollection and not ebc.is_weighted():
            found = _quant_tables(ebc, dim)
            if found is None:
                return None
            tables, layout, buffer = found
        else:
            return None
        ordered = [tables[n] for n in encoder.sparse]
        if len({(t.dtype, t.shape[1]) for t in ordered}) != 1:
            return None
        if type(module) is FullEmbedding and (
            encoder.vocabularies is None
            or any(  # every index must name a row of its table
                m >= len(t) for m, t in zip(encoder.vocabularies.max_index, ordered)
            )
        ):
            return None
        return cls(encoder, module, ordered, layout, dim, buffer)

    def vectors(self, feature: np.ndarray, row: np.ndarray, present: np.ndarray) -> np.ndarray:
        """The decoded rows ``tables[feature[i]][row[i]]`` (zeros where not ``present``)."""
        if self.window is not None:  # every table in one buffer: one gather, in request order
            window, start, stride = self.window
            return self._decode(window[start[feature] + row * stride[feature]].view(self.gather_dtype), present)
        order = _sorted_by_feature(feature)
        if order is None:
            return self._decode(self._gather(feature, row), present)
        stored = np.empty((len(feature), self.row_width), self.gather_dtype)
        stored[order] = self._gather(feature[order], row[order])
        return self._decode(stored, present)

    def _rows(self, feature: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The table row each pair's id selects (hashed: its bucket; else its vocabulary index)."""
        if self.vocabularies is None:
            return bucket_per_value_np(raw, self.salts[feature], self.num_rows[feature])
        return self.vocabularies.lookup(feature, raw)

    def _gather(self, feature: np.ndarray, row: np.ndarray) -> np.ndarray:
        """The stored rows of pairs sorted by feature (one take per feature present)."""
        stored = np.empty((len(feature), self.row_width), self.gather_dtype)
        for j, part in _runs(feature):
            self.tables[j].take(row[part], axis=0, out=stored[part])
        return stored

    def _decode(self, stored: np.ndarray, present: np.ndarray) -> np.ndarray:
        lay, d = self.layout, self.dim
        if lay.bits == 0:
            out = stored.astype(np.float32, copy=False)  # a fresh buffer: fp32 rows are used in place
        else:
            sb = np.ascontiguousarray(stored[:, lay.sb_offset : lay.sb_offset + 4]).view(np.float16).astype(np.float32)
            q = stored[:, lay.q_offset : lay.q_offset + d * lay.bits // 8]
            if lay.bits == 4:
                q = np.stack([q & 0x0F, q >> 4], axis=2).reshape(len(q), d)
            out = q.astype(np.float32) * sb[:, :1] + sb[:, 1:]
        out += np.float32(0)  # a pooled sum starts from +0: a stored -0.0 comes out as 0.0
        if not present.all():
            out[~present] = 0
        return out

    def __call__(self, pairs: Sequence[tuple[str, Any]]) -> np.ndarray:
        return self.from_ids(*self.encoder.raw_pairs(pairs))

    def from_ids(self, feature: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The vectors of ``(feature position, raw id)`` arrays (positions known to be valid)."""
        present = ~(self.encoder.multi_valued[feature] & (raw == MISSING_ID))  # a missing multi-valued value: an empty bag
        return self.vectors(feature, self._rows(feature, raw), present)
