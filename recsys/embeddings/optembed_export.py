"""Live table access, the rank bitmap remap, and OptEmbed's compact export and lookup.

Remap structure (counted by ``rank_bitmap_bytes``): a field with pruned rows stores a bitmap
of its kept rows (1 bit per original row, in 64-row blocks) and, per block, the int32 number
of kept rows before it. The compact row of an original id is ``rank[id // 64]`` plus the
kept bits before it in its block: 12 bytes per 64 rows (0.19 byte per row), 21× smaller
than an int32 array remap (fbgemm's ``pruned_array_lookup`` layout, 4 bytes per row), which
a server may still expand it to. Fields with nothing pruned have no remap.

Compact state (``compact_state`` of the method), per table of the base: ``<t>.weight``
``[kept_t, w_t]`` (pruned rows physically removed; only the ``w_t`` columns some feature still
reads: ``d_f`` for a ``full`` table), ``<t>.bits`` (uint8) / ``<t>.rank`` (int32) when rows
were pruned, and ``dims`` ``[F]``. ``CompactTables`` stands in for the base's EBC: it drops
pruned ids, remaps the rest, pools like the table (sum, or mean over kept ids) and pads to
the table's width; the base's own id rewriting and output assembly run unchanged around it.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import EmbeddingMethod

BLOCK = 64
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def _table_entries(ebc: nn.Module) -> Iterator[tuple[str, torch.Tensor | ShardedTensor]]:
    """``(table, weight)`` of a stock EBC or a ``ShardedEmbeddingBagCollection`` (via its state_dict)."""
    for key, value in ebc.state_dict().items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "embedding_bags" and parts[2] == "weight":
            yield parts[1], value


def _local_pieces(value: torch.Tensor | ShardedTensor) -> tuple[tuple[int, int], list[tuple[torch.Tensor, int, int]]]:
    """Full size and the local ``(tensor, row offset, column offset)`` pieces of a table."""
    if isinstance(value, ShardedTensor):
        pieces = [(s.tensor.detach(), s.metadata.shard_offsets[0], s.metadata.shard_offsets[1]) for s in value.local_shards()]
        return (value.size(0), value.size(1)), pieces
    return (value.shape[0], value.shape[1]), [(value.detach(), 0, 0)]


def _sum_over_ranks(t: torch.Tensor, value: torch.Tensor | ShardedTensor) -> torch.Tensor:
    """Sum the pieces other ranks hold (a sharded table only; plain tables are replicas)."""
    if isinstance(value, ShardedTensor) and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


@torch.no_grad()
def table_row_norms(ebc: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of every row of every table, read from the live (possibly sharded) weights."""
    out: dict[str, torch.Tensor] = {}
    for table, value in _table_entries(ebc):
        (rows, _), pieces = _local_pieces(value)
        norms = torch.zeros(rows, dtype=torch.float32)
        for tensor, r0, _ in pieces:
            norms[r0 : r0 + tensor.shape[0]] += tensor.abs().sum(1).float().cpu()
        out[table] = _sum_over_ranks(norms, value)
    return out


@torch.no_grad()
def table_weights(ebc: nn.Module) -> dict[str, torch.Tensor]:
    """A full fp32 copy of every table, gathered from the live (possibly sharded) weights."""
    out: dict[str, torch.Tensor] = {}
    for table, value in _table_entries(ebc):
        size, pieces = _local_pieces(value)
        full = torch.zeros(size, dtype=torch.float32)
        for tensor, r0, c0 in pieces:
            full[r0 : r0 + tensor.shape[0], c0 : c0 + tensor.shape[1]] = tensor.float().cpu()
        out[table] = _sum_over_ranks(full, value)
    return out


def rank_bitmap_bytes(rows: int) -> int:
    """Bytes of the remap of a table of ``rows`` rows (bitmap + int32 rank per 64 rows)."""
    blocks = -(-rows // BLOCK)
    return blocks * (BLOCK // 8 + 4)


def rank_bitmap(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bits uint8 [blocks·8], rank int32 [blocks])`` of a boolean keep mask."""
    blocks = -(-keep.numel() // BLOCK)
    padded = torch.zeros(blocks * BLOCK, dtype=torch.bool)
    padded[: keep.numel()] = keep.cpu()
    bits = (padded.view(-1, 8).to(torch.int64) << torch.arange(8)).sum(1).to(torch.uint8)
    counts = padded.view(blocks, BLOCK).sum(1)
    rank = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    return bits, rank


def rank_lookup(bits: torch.Tensor, rank: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Compact row of each original id, -1 where the row was pruned."""
    ids = ids.to(torch.int64)
    block, offset = ids // BLOCK, ids % BLOCK
    words = bits.view(-1, 8)[block].to(torch.int64)  # [n, 8]
    byte, bit = (offset // 8).unsqueeze(1), (offset % 8).unsqueeze(1)
    j = torch.arange(8).unsqueeze(0)
    partial = (torch.ones_like(bit) << bit) - 1
    below = torch.where(j < byte, torch.full_like(words, 255), torch.where(j == byte, partial, torch.zeros_like(words)))
    before = _POPCOUNT[words & below].sum(1)
    present = (words.gather(1, byte) >> bit).squeeze(1) & 1
    return torch.where(present == 1, rank.to(torch.int64)[block] + before, torch.full_like(ids, -1))


def compact_tables(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """Compact state of tables: kept rows and the first ``widths[t]`` columns, bitmaps where pruned."""
    state: dict[str, torch.Tensor] = {}
    for name, width in widths.items():
        if width:
            keep = masks[name]
            state[f"{name}.weight"] = weights[name][keep, :width].contiguous()
            if not bool(keep.all()):
                state[f"{name}.bits"], state[f"{name}.rank"] = rank_bitmap(keep)
    return state


def _pool_compact(jt: JaggedTensor, state: dict[str, torch.Tensor], table: str, width: int, pooling: PoolingType) -> torch.Tensor:
    """Pooled rows of one key from a compact table (pruned ids dropped), zero-padded to ``width``."""
    ids, lengths, weights = jt.values().to(torch.int64), jt.lengths().to(torch.int64), jt.weights_or_none()
    if f"{table}.weight" not in state:  # no field reads any column of this table
        return torch.zeros(lengths.numel(), width)
    bags = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    if f"{table}.bits" in state:
        ids = rank_lookup(state[f"{table}.bits"], state[f"{table}.rank"], ids)
        keep = ids >= 0
        ids, bags = ids[keep], bags[keep]
        weights = weights[keep] if weights is not None else None
        lengths = torch.bincount(bags, minlength=lengths.numel())
    weight = state[f"{table}.weight"]
    rows = weight[ids] if weights is None else weight[ids] * weights.unsqueeze(1)
    pooled = torch.zeros(lengths.numel(), weight.shape[1]).index_add_(0, bags, rows)
    if pooling == PoolingType.MEAN:
        pooled = pooled / lengths.clamp_min(1).unsqueeze(1).to(pooled.dtype)
    return torch.nn.functional.pad(pooled, (0, width - weight.shape[1]))


class CompactTables(nn.Module):
    """Called like the base's EBC, but reads compact tables: pruned ids dropped, rows remapped.

    Args:
        configs: the base's table configs (names, widths, keys, pooling).
        state: ``<table>.weight`` ``[kept, stored width]`` (absent: nothing stored) and, for
            tables with pruned rows, ``<table>.bits`` / ``<table>.rank``.
    """

    def __init__(self, configs: Sequence[EmbeddingBagConfig], state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.configs = list(configs)
        self._embedding_bag_configs = self.configs  # what ``base.ebc_configs`` reads
        self.state = state

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.configs

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        by_key = features.to_dict()
        keys, outs = [], []
        for c in self.configs:
            for key in c.feature_names:
                keys.append(key)
                outs.append(_pool_compact(by_key[key], self.state, c.name, c.embedding_dim, c.pooling))
        return KeyedTensor(keys=keys, length_per_key=[int(o.shape[1]) for o in outs], values=torch.cat(outs, dim=1))


def compact_lookup(method: EmbeddingMethod, names: list[str], state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain-torch module reproducing an ``optembed``'s eval forward from its ``compact_state``:
    ``method``, a fresh base, with its EBC replaced by ``CompactTables``, then each field's column prefix."""
    method.ebc = CompactTables(method.ebc.embedding_bag_configs(), state)
    return _CompactOptEmbed(method, names, state["dims"])


class _CompactOptEmbed(nn.Module):
    def __init__(self, base: nn.Module, names: list[str], dims: torch.Tensor) -> None:
        super().__init__()
        self.base, self.names = base, names
        self.widths = [base.output_dims()[n] for n in names]
        offsets = torch.cat([torch.arange(w) for w in self.widths])
        self.keep = (offsets < torch.repeat_interleave(dims, torch.tensor(self.widths))).to(torch.float32)

    @torch.no_grad()
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        values = self.base(features).values() * self.keep
        return KeyedTensor(keys=self.names, length_per_key=self.widths, values=values)
