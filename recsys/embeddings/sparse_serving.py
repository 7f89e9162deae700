"""The served form of sparse tables: CSR, or dense where that is not larger, and a pure-torch lookup.

CSR of a ``rows × dim`` table: ``crow`` (int32 row offsets; int64 past 2^31 entries), ``col``
(column numbers: uint8 for widths up to 256, else int16 / int32) and ``val`` (fp32 values),
row-major. ``served_bytes`` is what the accounting rule counts; ``serve`` swaps the stock
EBCs of a method for ``CSRBagCollection`` modules reading the served tables, so the method's
own id rewriting and post-processing run unchanged on top.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


def index_dtype(limit: int) -> torch.dtype:
    """Smallest stored dtype holding integers ``0..limit`` (uint8 for column numbers < 256)."""
    for dtype, top in ((torch.uint8, 255), (torch.int16, 2**15 - 1), (torch.int32, 2**31 - 1)):
        if limit <= top:
            return dtype
    return torch.int64


def csr_bytes(rows: int, dim: int, nnz: int) -> int:
    """Bytes of the CSR form: row offsets, column numbers and fp32 values."""
    ptr = 4 if nnz < 2**31 else 8
    return (rows + 1) * ptr + nnz * (index_dtype(dim - 1).itemsize + 4)


def to_csr(weight: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``crow``, ``col``, ``val`` of the active entries of ``weight``, row-major."""
    nz = mask.nonzero()
    nnz, (rows, dim) = int(nz.shape[0]), mask.shape
    ptr = torch.int32 if nnz < 2**31 else torch.int64
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(mask.sum(1), 0)
    return {"crow": crow.to(ptr), "col": nz[:, 1].to(index_dtype(dim - 1)), "val": weight[mask].float().contiguous()}


def csr_rows(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The dense ``len(ids) × dim`` rows ``ids`` of a CSR table."""
    start = crow[ids].long()
    counts = crow[ids + 1].long() - start
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(ids.numel()), counts, output_size=total)
    first = torch.repeat_interleave(start - (torch.cumsum(counts, 0) - counts), counts, output_size=total)
    pos = torch.arange(total) + first
    out = torch.zeros(ids.numel(), dim, dtype=val.dtype)
    out[owner, col[pos].long()] = val[pos]
    return out


def fit_density(budget: int, other_bytes: int, shapes: list[tuple[int, int]], uniform: bool = False) -> float:
    """The largest density (≤ 1) at which tables of ``shapes`` in CSR, plus ``other_bytes``, fit
    ``budget`` when each table keeps ``floor(density · rows · dim)`` weights (``uniform``: any
    split of the total between tables fits, by pricing every column number at the widest)."""
    cols = [index_dtype(dim - 1).itemsize for _, dim in shapes]
    cols = [max(cols)] * len(cols) if uniform else cols
    fixed = other_bytes + sum(csr_bytes(rows, dim, 0) for rows, dim in shapes)
    if budget <= fixed:
        raise ValueError(
            f"method 'dsl' cannot fit the budget of {budget} bytes: row offsets and the base's other structures alone need {fixed} bytes"
        )
    return min(1.0, (budget - fixed) / sum(rows * dim * (4 + c) for (rows, dim), c in zip(shapes, cols)))


def served_bytes(rows: int, dim: int, nnz: int) -> int:
    """Bytes of a table's served form: CSR, or dense where that is not larger."""
    return min(rows * dim * 4, csr_bytes(rows, dim, nnz))


def served_table(weight: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The served form of ``weight ⊙ mask``: ``{crow, col, val}`` or ``{weight}`` (see ``served_bytes``)."""
    rows, dim = mask.shape
    if rows * dim * 4 <= csr_bytes(rows, dim, int(mask.sum())):
        return {"weight": weight * mask}
    return to_csr(weight, mask)


def serve(method: nn.Module, compact: dict[str, torch.Tensor]) -> nn.Module:
    """``method`` (untrained) with every stock EBC replaced by a ``CSRBagCollection`` reading
    ``compact`` (keys ``<ebc path>.<table>.<part>``), in eval mode."""
    for path, ebc in [(p, m) for p, m in method.named_modules() if type(m) is EmbeddingBagCollection]:
        tables = {
            c.name: {k[len(f"{path}.{c.name}.") :]: v for k, v in compact.items() if k.startswith(f"{path}.{c.name}.")}
            for c in ebc.embedding_bag_configs()
        }
        parent, _, leaf = path.rpartition(".")
        setattr(method.get_submodule(parent), leaf, CSRBagCollection(ebc, tables))
    return method.eval()


class CSRBagCollection(nn.Module):
    """Pure-torch stand-in for a stock EBC whose tables are stored as CSR (or dense) tensors.

    Pools like ``nn.EmbeddingBag`` (``include_last_offset``), so on the same rows it gives the
    stock EBC's output bit for bit.
    """

    def __init__(self, ebc: EmbeddingBagCollection, tables: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        configs = ebc.embedding_bag_configs()
        self.tables = tables
        self.dims = {c.name: c.embedding_dim for c in configs}
        self.table_of = {f: c.name for c in configs for f in c.feature_names}
        self.mode = {f: "mean" if c.pooling == PoolingType.MEAN else "sum" for c in configs for f in c.feature_names}
        self.weighted = ebc.is_weighted()

    def rows(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        t = self.tables[table]
        if "weight" in t:
            return t["weight"][ids]
        return csr_rows(t["crow"], t["col"], t["val"], ids, self.dims[table])

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = []
        for key, jt in features.to_dict().items():
            ids = jt.values().long()
            rows = self.rows(self.table_of[key], ids)
            weights = jt.weights() if self.weighted else None
            offsets = jt.offsets().long()
            pooled.append(
                F.embedding_bag(torch.arange(ids.numel()), rows, offsets, mode=self.mode[key], per_sample_weights=weights, include_last_offset=True)
            )
        return KeyedTensor(keys=features.keys(), length_per_key=[int(p.shape[1]) for p in pooled], values=torch.cat(pooled, dim=1))
