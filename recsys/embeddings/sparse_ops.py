"""Tensor logic of sparse embedding tables: masks, prune/regrow, live weights, the CSR served form.

* ``update_ratio``: the cosine-decayed share of active weights replaced at an update.
* ``random_mask`` / ``prune_regrow``: exact-count masks. Selection ranks unique int64 keys
  (the float32 bits of the score, then a seeded pseudo-random permutation of the flat index),
  so ``topk`` picks exactly ``k`` and ties never break the count.
* ``table_views`` / ``optimizer_views``: the live weights and optimizer states of a stock or a
  TorchRec-sharded ``EmbeddingBagCollection`` as ``(slices, tensor)`` pieces of each table;
  writing into a piece writes the table the kernel trains.
* CSR: ``crow`` (int32 row offsets; int64 past 2^31 entries), ``col`` (uint8 for widths up to
  256, else int16 / int32), ``val`` (fp32); ``CSRBagCollection`` pools from it in pure torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

Piece = tuple[tuple[slice, ...], torch.Tensor]
_LOW31 = (1 << 31) - 1
_GOLDEN = 0x9E3779B1  # odd, so ``index ↦ index · _GOLDEN mod 2^31`` is a bijection
PREFIX, SUFFIX = "embedding_bags.", ".weight"


def update_ratio(step: int, total: int, zeta0: float = 0.5, zeta_min: float = 0.005) -> float:
    """ζ_t = ζ_min + ½(ζ_0 − ζ_min)(1 + cos(π t / T)), with ``t`` clipped to ``[0, T]``."""
    t = min(max(step, 0), total)
    return zeta_min + 0.5 * (zeta0 - zeta_min) * (1.0 + math.cos(math.pi * t / max(total, 1)))


def random_mask(rows: int, dim: int, active: int, seed: int) -> torch.Tensor:
    """A ``rows × dim`` bool mask with exactly ``active`` True entries, uniformly at random."""
    mask = torch.zeros(rows * dim, dtype=torch.bool)
    mask[torch.randperm(rows * dim, generator=torch.Generator().manual_seed(seed))[:active]] = True
    return mask.view(rows, dim)


def _keys(score: torch.Tensor, index: torch.Tensor, salt: int) -> torch.Tensor:
    """Unique int64 keys ordered by ``score ≥ 0``, ties by a salted permutation of ``index``."""
    if index.numel() and int(index.max()) > _LOW31:
        raise ValueError("prune_regrow handles at most 2^31 weights at once")
    bits = score.float().contiguous().view(torch.int32).to(torch.int64)
    tie = (((index * _GOLDEN) & _LOW31) + (salt & _LOW31)) & _LOW31
    return (bits << 31) | tie


def prune_regrow(mask: torch.Tensor, magnitude: torch.Tensor, growth: torch.Tensor, k: int, salt: int) -> torch.Tensor:
    """New flat mask: drop the ``k`` active entries of smallest ``magnitude``, then activate the
    ``k`` inactive entries (just-dropped included) of largest ``growth``; the count is unchanged."""
    new = mask.clone()
    active = mask.nonzero().squeeze(1)
    k = min(k, active.numel())
    if k == 0:
        return new
    drop = torch.topk(_keys(magnitude[active], active, salt), k, largest=False).indices
    new[active[drop]] = False
    inactive = (~new).nonzero().squeeze(1)
    grow = torch.topk(_keys(growth[inactive], inactive, salt + 1), k).indices
    new[inactive[grow]] = True
    return new


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


def _pieces(value: Any) -> list[Piece]:
    """``(slices, tensor)`` of each local shard of a ShardedTensor, or the whole plain tensor."""
    shards = value.local_shards() if hasattr(value, "local_shards") else None
    if shards is None:
        return [((slice(None),) * value.dim(), value.detach())]
    return [
        (tuple(slice(o, o + n) for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes)), s.tensor)
        for s in shards
    ]


def table_views(ebc: nn.Module) -> dict[str, list[Piece]]:
    """Live weight pieces of every table of a stock or sharded EBC (views, not copies)."""
    return {
        key[len(PREFIX) : -len(SUFFIX)]: _pieces(value)
        for key, value in ebc.state_dict().items()
        if key.startswith(PREFIX) and key.endswith(SUFFIX)
    }


def optimizer_views(ebc: nn.Module) -> Iterator[tuple[str, Piece]]:
    """``(table, piece)`` of every optimizer-state tensor of the tables: a sharded EBC's fused
    optimizer, or the in-backward optimizers of a stock EBC's parameters."""
    fused = getattr(ebc, "fused_optimizer", None)
    if fused is not None:
        owners = [(name, fused.state.get(p, {})) for name, p in fused.params.items()]
    else:
        owners = [
            (name, opt.state.get(p, {})) for name, p in ebc.named_parameters() for opt in getattr(p, "_in_backward_optimizers", [])
        ]
    for name, state in owners:
        table = name[len(PREFIX) : -len(SUFFIX)]
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                for piece in _pieces(value):
                    yield table, piece


@dataclass
class Lookup:
    """One key's lookups in a batch: table, rows read, bag of each value, gradient scale, output column."""

    table: int
    ids: torch.Tensor
    bag: torch.Tensor
    scale: torch.Tensor | None
    start: int


def bag_lookups(
    kjt: KeyedJaggedTensor, pooled: KeyedTensor, tables: dict[str, tuple[int, bool]], mask: Callable[[int], torch.Tensor]
) -> tuple[list[Lookup], torch.Tensor]:
    """The lookups behind each key of ``pooled`` (``tables``: key → (table, MEAN-pooled)), and the
    factor on ``pooled``: per bag, the OR of its rows' masks (``mask(table)``)."""
    batch, lengths, values, weights = kjt.stride(), kjt.lengths(), kjt.values(), kjt.weights_or_none()
    position, offsets = {k: i for i, k in enumerate(kjt.keys())}, kjt.offset_per_key()
    lookups, factors = [], []
    for key, start in zip(pooled.keys(), pooled.offset_per_key()):
        (table, mean), j = tables[key], position[key]
        ids = values[offsets[j] : offsets[j + 1]].long()
        lens = lengths[j * batch : (j + 1) * batch].long()
        bag = torch.repeat_interleave(torch.arange(batch, device=ids.device), lens, output_size=ids.numel())
        m = mask(table)
        factors.append(torch.zeros(batch, m.shape[1], device=m.device).index_add_(0, bag, m[ids].float()).clamp_(max=1.0))
        scale = None if weights is None else weights[offsets[j] : offsets[j + 1]].float()
        if mean:
            scale = (1.0 if scale is None else scale) / lens[bag].clamp(min=1).float()
        lookups.append(Lookup(table, ids, bag, scale, start))
    return lookups, torch.cat(factors, dim=1)


def scatter_gradient(grad: torch.Tensor, lookups: list[Lookup], accumulator: Callable[[int], torch.Tensor]) -> None:
    """Add each looked-up value's gradient (its bag's pooled gradient × scale) to its table row."""
    for lk in lookups:
        acc = accumulator(lk.table)
        per_value = grad[:, lk.start : lk.start + acc.shape[1]].index_select(0, lk.bag)
        acc.index_add_(0, lk.ids, per_value if lk.scale is None else per_value * lk.scale[:, None])


def gather(pieces: list[Piece], rows: int, dim: int) -> torch.Tensor:
    """A full ``rows × dim`` copy of a table from its pieces."""
    out = torch.zeros(rows, dim)
    for sl, piece in pieces:
        out[sl] = piece
    return out


@torch.no_grad()
def remask(pieces: list[Piece], mask: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """``W ← W ⊙ M`` in place on a table's pieces: every row, or only ``rows`` (sorted or not)."""
    for sl, piece in pieces:
        if rows is None:
            piece.mul_(mask[sl])
            continue
        r0 = sl[0].start or 0
        mine = rows[(rows >= r0) & (rows < r0 + piece.shape[0])]
        piece[mine - r0] *= mask[mine][:, sl[1]]


@torch.no_grad()
def reset_state(pieces: Iterator[Piece], before: torch.Tensor, grown: torch.Tensor) -> None:
    """Zero optimizer state of newly active weights: per-weight state at ``grown``, per-row state
    only in rows without an active weight ``before`` (a live row's state serves its active weights)."""
    revived = grown.any(1) & ~before.any(1)
    for sl, state in pieces:
        if state.shape == grown[sl].shape:
            state[grown[sl]] = 0
        elif state.shape[0] == revived[sl[0]].shape[0]:
            state[revived[sl[0]]] = 0


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
            pooled.append(F.embedding_bag(torch.arange(ids.numel()), rows, offsets, mode=self.mode[key], per_sample_weights=weights, include_last_offset=True))
        return KeyedTensor(keys=features.keys(), length_per_key=[int(p.shape[1]) for p in pooled], values=torch.cat(pooled, dim=1))
