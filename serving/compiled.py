"""The compiled id path: ``recsys.serving.idpath`` (``serving/idpath.c``) over a ``DirectLookup``'s arrays.

``kernel(direct)`` gives the C ``Kernel`` reading the loaded artifact in place (the vocabulary hash
table, each table's stored rows): ``Kernel.answer(body, max_items, max_string_length)`` turns a
whole ids.v1 body into the float32 answer bytes (``None`` for any body the numpy path would not
answer 200, which then answers it), ``Kernel.fill(feature, raw, out)`` writes the vectors of
``(position, raw id)`` arrays. Both equal the numpy path (``DirectLookup``) bit for bit.

A checkout whose extension was never built (``make install`` builds it) serves with the numpy
path: ``kernel`` returns ``None`` and logs one warning; ``RECSYS_IDPATH=0`` turns the kernel off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from recsys.serving.direct import DirectLookup
from recsys.serving.encode import MISSING_ID

log = logging.getLogger("recsys.serving.compiled")
_KINDS = {(0, "float32"): 0, (0, "float16"): 1, (8, "uint8"): 8, (4, "uint8"): 4}

try:
    from recsys.serving import idpath
except ImportError as exc:  # a source checkout never built
    idpath = None
    _MISSING = str(exc)
_warned = False


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def _contiguous(a: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype) if len(a) else np.zeros(1, dtype)  # a valid address even when empty


def enabled() -> bool:
    """Whether the extension is importable (and not turned off with ``RECSYS_IDPATH=0``); warns once when not built."""
    global _warned
    if os.environ.get("RECSYS_IDPATH", "1") == "0":
        return False
    if idpath is None and not _warned:
        _warned = True
        log.warning("recsys.serving.idpath is not built (%s): lookups use the numpy path; `make install` builds it", _MISSING)
    return idpath is not None


def kernel(direct: DirectLookup | None) -> Any | None:
    """The compiled reader of ``direct``'s tables, ``None`` when not built or not applicable."""
    if direct is None or not enabled():
        return None
    lay, tables = direct.layout, direct.tables
    kind = _KINDS.get((lay.bits, np.dtype(direct.gather_dtype).name))
    if kind is None or (kind == 4 and direct.dim % 2):
        return None
    width = direct.dim * 4 if kind == 0 else direct.dim * 2 if kind == 1 else 0
    if kind in (4, 8):
        width = max(lay.q_offset + direct.dim * lay.bits // 8, lay.sb_offset + 4)
    table = []
    for t in tables:
        if t.ndim != 2 or t.strides[1] != t.itemsize or t.shape[1] * t.itemsize < width or t.strides[0] < 0:
            return None
        table += [_address(t), t.strides[0]]
    enc = direct.encoder
    keep: list[Any] = [direct, *tables]
    if direct.hashed:
        salts, num_rows = _contiguous(direct.salts, np.int64), _contiguous(direct.num_rows, np.int64)
        vocab = (0,) * 8 + (0,)
        keep += [salts, num_rows]
        hashes = (_address(salts), _address(num_rows))
    else:
        v = direct.vocabularies
        arrays = [
            _contiguous(v.ids, np.int64),
            _contiguous(v.index, np.int32),
            _contiguous(v.full, np.bool_),
            _contiguous(v.start, np.int64),
            _contiguous(v.count, np.uint64),
            _contiguous(v.over_ids, np.int64),
            _contiguous(v.over_feature, np.int16),
            _contiguous(v.over_index, np.int32),
        ]
        keep += arrays
        vocab = (*map(_address, arrays), len(v.over_ids))
        hashes = (0, 0)
    names = tuple(n.encode("utf-8") for n in enc.sparse)
    multi = enc.multi_valued.astype(np.uint8).tobytes()
    layout = (kind, direct.dim, lay.q_offset, lay.sb_offset)
    return idpath.Kernel(names, multi, direct.hashed, vocab, hashes, np.array(table, np.uint64).tobytes(), layout, MISSING_ID, tuple(keep))
