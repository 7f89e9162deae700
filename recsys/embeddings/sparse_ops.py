"""Tensor logic of sparse embedding tables: masks, prune/regrow, live weights, masked lookups.

* ``update_ratio``: the cosine-decayed share of active weights replaced at an update.
* ``random_mask`` / ``prune_regrow`` / ``prune_to``: exact-count masks. Selection ranks unique int64 keys
  (the float32 bits of the score, then a seeded pseudo-random permutation of the flat index),
  so ``topk`` picks exactly ``k`` and ties never break the count.
* ``table_views`` / ``optimizer_views``: the live weights and optimizer states of a stock or a
  TorchRec-sharded ``EmbeddingBagCollection`` as ``(slices, tensor)`` pieces of each table;
  writing into a piece writes the table the kernel trains.
* ``read`` / ``scatter``: the rows an EBC input reads (keys grouped by table width, tables of a
  width stacked), the mask factor of each bag, and the scatter-add of pooled gradients to rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

Piece = tuple[tuple[slice, ...], torch.Tensor]
_LOW31 = (1 << 31) - 1
_GOLDEN = 0x9E3779B1  # odd, so ``index ↦ index · _GOLDEN mod 2^31`` is a bijection
_SAMPLE = 1 << 16
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


def _top(keys: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Positions of the ``k`` largest (smallest) of the unique ``keys``, in no particular order."""
    if k >= keys.numel():
        return torch.arange(keys.numel())
    if k * 8 < keys.numel():
        return torch.topk(keys, k, largest=largest).indices
    kth = torch.kthvalue(keys, keys.numel() - k + 1 if largest else k).values  # keys are unique: exactly k pass
    return ((keys >= kth) if largest else (keys <= kth)).nonzero().squeeze(1)


def _select(score: torch.Tensor, k: int, available: int, salt: int, largest: bool) -> torch.Tensor:
    """Flat positions of the ``k`` largest (smallest) eligible scores ``≥ 0``, ties broken by a
    salted permutation of the position; ineligible entries hold -1 (largest) or +inf (smallest).

    A strided sample bounds the k-th score, so the exact ranking only runs over the entries past
    the bound (all entries when the bound lets fewer than ``k`` through)."""
    eligible = (lambda x: x >= 0) if largest else (lambda x: x < math.inf)
    sample = score[:: max(1, score.numel() // _SAMPLE)]
    sample = sample[eligible(sample)]
    pool = None
    if k < available and sample.numel():
        j = min(sample.numel(), math.ceil(1.25 * k * sample.numel() / available) + 16)
        bound = torch.topk(sample, j, largest=largest).values[-1]
        pool = ((score >= bound) if largest else (score <= bound)).nonzero().squeeze(1)
    if pool is None or pool.numel() < k:
        pool = eligible(score).nonzero().squeeze(1)
    return pool[_top(_keys(score[pool], pool, salt), k, largest)]


def prune_regrow(mask: torch.Tensor, weight: torch.Tensor, growth: torch.Tensor | None, k: int, salt: int) -> torch.Tensor:
    """New flat mask: drop the ``k`` active entries of smallest ``|weight|``, then activate the
    ``k`` inactive entries (just-dropped included) of largest ``|growth|`` (None: all zero);
    the count is unchanged."""
    new = mask.clone()
    active = int(mask.sum())
    k = min(k, active)
    if k == 0:
        return new
    new[_select(weight.abs().masked_fill_(~mask, math.inf), k, active, salt, largest=False)] = False
    score = torch.zeros(mask.numel()) if growth is None else growth.abs()
    new[_select(score.masked_fill_(new, -1.0), k, mask.numel() - active + k, salt + 1, largest=True)] = True
    return new


def prune_to(masks: list[torch.Tensor], weights: list[torch.Tensor], keep: list[int], salt: int, together: bool) -> list[torch.Tensor]:
    """Masks with only the largest ``|weight|`` of each tensor's active entries left, ``keep[i]``
    of tensor ``i`` (or, ``together``, ``sum(keep)`` over all tensors as one); never adds any."""

    def shrink(mask: torch.Tensor, weight: torch.Tensor, k: int, s: int) -> torch.Tensor:
        new, active = mask.clone(), int(mask.sum())
        if active > k:
            new[_select(weight.abs().masked_fill_(~mask, math.inf), active - k, active, s, largest=False)] = False
        return new

    if not together:
        return [shrink(m.view(-1), w.reshape(-1), k, salt + 31 * i).view(m.shape) for i, (m, w, k) in enumerate(zip(masks, weights, keep))]
    starts = [0, *torch.tensor([m.numel() for m in masks]).cumsum(0).tolist()]
    flat = shrink(torch.cat([m.view(-1) for m in masks]), torch.cat([w.reshape(-1) for w in weights]), sum(keep), salt)
    return [flat[a:b].view(m.shape) for a, b, m in zip(starts, starts[1:], masks)]


def new_masks(
    masks: list[torch.Tensor], weights: list[torch.Tensor], growth: list[torch.Tensor | None], zeta: float, salt: int, together: bool
) -> list[torch.Tensor]:
    """``prune_regrow`` at ratio ``zeta`` of every tensor's active count, or (``together``) of
    the total over all tensors as one, so that counts may move between tensors."""
    if not together:
        return [
            prune_regrow(m.view(-1), w.reshape(-1), g, math.ceil(zeta * int(m.sum())), salt + 31 * i).view(m.shape)
            for i, (m, w, g) in enumerate(zip(masks, weights, growth))
        ]
    starts = [0, *torch.tensor([m.numel() for m in masks]).cumsum(0).tolist()]
    flat_growth = None
    if any(g is not None for g in growth):
        flat_growth = torch.cat([torch.zeros(m.numel()) if g is None else g for g, m in zip(growth, masks)])
    k = math.ceil(zeta * sum(int(m.sum()) for m in masks))
    flat = prune_regrow(torch.cat([m.view(-1) for m in masks]), torch.cat([w.reshape(-1) for w in weights]), flat_growth, k, salt)
    return [flat[a:b].view(m.shape) for a, b, m in zip(starts, starts[1:], masks)]


def _pieces(value: Any) -> list[Piece]:
    """``(slices, tensor)`` of each local shard of a ShardedTensor, or the whole plain tensor."""
    shards = value.local_shards() if hasattr(value, "local_shards") else None
    if shards is None:
        return [((slice(None),) * value.dim(), value.detach())]
    return [(tuple(slice(o, o + n) for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes)), s.tensor) for s in shards]


class Scratch(dict):
    """Derived tensors (live views, stacked masks); a deep copy starts empty and rebuilds its own."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "Scratch":
        return Scratch()

    def views(self, ebc: nn.Module) -> dict[str, list[Piece]]:
        """``table_views(ebc)``, kept while that module is alive."""
        cached = self.get(id(ebc))
        if cached is None or cached[0] is not ebc:
            cached = self[id(ebc)] = (ebc, table_views(ebc))
        return cached[1]


def table_views(ebc: nn.Module) -> dict[str, list[Piece]]:
    """Live weight pieces of every table of a stock or sharded EBC (views, not copies)."""
    return {
        key[len(PREFIX) : -len(SUFFIX)]: _pieces(value) for key, value in ebc.state_dict().items() if key.startswith(PREFIX) and key.endswith(SUFFIX)
    }


def optimizer_views(ebc: nn.Module) -> dict[str, list[Piece]]:
    """Pieces of every optimizer-state tensor of each table: a sharded EBC's fused optimizer,
    or the in-backward optimizers of a stock EBC's parameters."""
    fused = getattr(ebc, "fused_optimizer", None)
    if fused is not None:
        state = fused.state  # built anew on every access
        owners = [(name, state.get(p, {})) for name, p in fused.params.items()]
    else:
        owners = [(name, opt.state.get(p, {})) for name, p in ebc.named_parameters() for opt in getattr(p, "_in_backward_optimizers", [])]
    views: dict[str, list[Piece]] = {}
    for name, values in owners:
        table = views.setdefault(name[len(PREFIX) : -len(SUFFIX)], [])
        table += [piece for v in values.values() if isinstance(v, torch.Tensor) and v.dim() > 0 for piece in _pieces(v)]
    return views


@dataclass(frozen=True)
class KeyGroup:
    """The keys of one EBC input whose tables have width ``dim``. Tables of a width are stacked
    into one row space: group row = the table's offset + id."""

    dim: int
    positions: list[int]  # positions of the keys in the KJT
    offsets: torch.Tensor  # per key: first group row of its table
    mean: torch.Tensor  # per key: MEAN-pooled (bool)


def stack_offsets(shapes: list[tuple[int, int]]) -> tuple[list[int], dict[int, list[int]]]:
    """Tables of one width stacked row-wise: each table's first row, and the tables of each width."""
    offsets, by_dim = [], {}
    for i, (_rows, dim) in enumerate(shapes):
        offsets.append(sum(shapes[j][0] for j in by_dim.setdefault(dim, [])))
        by_dim[dim].append(i)
    return offsets, by_dim


def split_rows(rows: torch.Tensor, tables: list[int], offsets: list[int], sizes: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
    """``(table, its distinct local rows)`` for stacked ``rows`` of the given tables."""
    rows = torch.unique(rows)
    for i in tables:
        mine = rows[(rows >= offsets[i]) & (rows < offsets[i] + sizes[i])]
        if mine.numel():
            yield i, mine - offsets[i]


def key_groups(tables: list[tuple[int, bool]], dims: list[int], offsets: list[int]) -> list[KeyGroup]:
    """Group the keys of an EBC input, given each key's ``(table, MEAN-pooled)``, by table width."""
    return [
        KeyGroup(
            dim,
            [j for j, (i, _) in enumerate(tables) if dims[i] == dim],
            torch.tensor([offsets[i] for i, _ in tables if dims[i] == dim]),
            torch.tensor([mean for i, mean in tables if dims[i] == dim]),
        )
        for dim in sorted({dims[i] for i, _ in tables})
    ]


@dataclass
class Reads:
    """What a group's keys read in one batch (values key-major, as in the KJT)."""

    group: KeyGroup
    rows: torch.Tensor  # group row of each value
    bag: torch.Tensor | None  # key-major bag of each value; None: value i is bag i
    scale: torch.Tensor | None  # gradient scale of each value (weight, 1/len under MEAN)
    pooled_rows: torch.Tensor  # rows read by bags of several values
    batch_major: bool = False  # values ordered like the pooled output's rows (one per bag, b·keys + slot)


def read(kjt: KeyedJaggedTensor, group: KeyGroup, mask: torch.Tensor, slots: torch.Tensor | None = None) -> tuple[Reads, torch.Tensor]:
    """The group's reads, and the factor ``[keys, B, dim]``: per bag, the OR of its rows' masks
    (``mask``: the group's stacked masks as 0/1 floats). ``slots``: the group key in each
    ``dim``-wide slot of the pooled output, when the group fills it; unweighted one-value bags
    then give batch-major reads and the factor laid out as the output ``[B, keys · dim]``."""
    sub = kjt if group.positions == list(range(len(kjt.keys()))) else kjt.permute(group.positions)
    batch, values, lengths, weights = sub.stride(), sub.values(), sub.lengths(), sub.weights_or_none()
    n, bags, device = values.numel(), len(group.positions) * batch, values.device
    counts = torch.tensor(sub.length_per_key(), device=device)
    rows = values.long() + torch.repeat_interleave(group.offsets, counts, output_size=n)
    scale = None if weights is None else weights.float()
    if n == bags and int(lengths.max()) == 1:  # one value per bag: its row's mask is the factor
        if slots is not None and scale is None:
            rows = rows.view(-1, batch).index_select(0, slots).t().reshape(-1)
            return Reads(group, rows, None, None, rows[:0], True), mask.index_select(0, rows).view(batch, -1)
        return Reads(group, rows, None, scale, rows[:0]), mask.index_select(0, rows).view(-1, batch, group.dim)
    lens = lengths.long()
    bag = torch.repeat_interleave(torch.arange(bags, device=device), lens, output_size=n)
    factor = torch.zeros(bags, group.dim, device=device).index_add_(0, bag, mask.index_select(0, rows)).clamp_(max=1.0)
    if bool(group.mean.any()):
        mean = torch.repeat_interleave(group.mean, counts, output_size=n)
        inverse = torch.where(mean, 1.0 / lens.index_select(0, bag).clamp(min=1).float(), 1.0)
        scale = inverse if scale is None else scale * inverse
    return Reads(group, rows, bag, scale, rows[lens.index_select(0, bag) > 1]), factor.view(-1, batch, group.dim)


def scatter(grad: torch.Tensor, reads: Reads, acc: torch.Tensor) -> None:
    """Add each value's gradient (its bag's row of ``grad`` ``[keys, B, dim]``, or of the pooled
    gradient for batch-major reads, × scale) to its row of ``acc``."""
    flat = grad.reshape(-1, reads.group.dim)
    per_value = flat if reads.bag is None else flat.index_select(0, reads.bag)
    acc.index_add_(0, reads.rows, per_value if reads.scale is None else per_value * reads.scale[:, None])


def gather(pieces: list[Piece], rows: int, dim: int) -> torch.Tensor:
    """A table from its pieces: the piece itself when it is the whole table, else a copy."""
    if len(pieces) == 1 and pieces[0][1].shape == (rows, dim):
        return pieces[0][1]
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
def reset_state(pieces: list[Piece], before: torch.Tensor, grown: torch.Tensor) -> None:
    """Zero optimizer state of newly active weights: per-weight state at ``grown``, per-row state
    only in rows without an active weight ``before`` (a live row's state serves its active weights)."""
    revived = grown.any(1) & ~before.any(1)
    for sl, state in pieces:
        if state.shape == grown[sl].shape:
            state[grown[sl]] = 0
        elif state.shape[0] == revived[sl[0]].shape[0]:
            state[revived[sl[0]]] = 0
