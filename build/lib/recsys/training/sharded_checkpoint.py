"""Sharded training checkpoints without pickle: per-rank safetensors plus JSON manifests.

A checkpoint folder holds, for every rank ``r`` that wrote one:

* ``rank-<r>.safetensors``: the rank's local shards of every ``ShardedTensor`` (model tables
  and the fused optimizer's per-table state) and, on rank 0 only, every replicated tensor
  (dense parameters, buffers, dense optimizer state);
* ``rank-<r>.json``: ``{"tensors": {key: {"size", "dtype", "pieces": [{"name", "offsets",
  "sizes"}]}}}``: where each piece sits in the full tensor.

``load_sharded`` copies into any target layout the overlap of every saved piece, so a
checkpoint written by ``W`` ranks loads into ``W'`` ranks, or into one process. Nothing is
gathered on one rank and nothing is unpickled. (``torch.distributed.checkpoint`` would also
handle ShardedTensor, but its ``.metadata`` file is a pickle.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

Stateful = torch.Tensor | ShardedTensor


def _flat_optimizer(state: dict[str, Any], prefix: str, out: dict[str, Stateful]) -> None:
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flat_optimizer(value, f"{name}/", out)
        elif isinstance(value, (torch.Tensor, ShardedTensor)):
            out[name] = value


def training_state(module: nn.Module, optimizer: Any) -> dict[str, Stateful]:
    """The live tensors of a model and its (keyed) optimizer, by flat name.

    Values are the module's and optimizer's own tensors (not copies): ``load_sharded`` writes
    into them in place. Optimizers with lazy state must be initialised first (``init_optimizer_state``).
    """
    out: dict[str, Stateful] = {f"model/{k}": v for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, (torch.Tensor, ShardedTensor))}
    _flat_optimizer(optimizer.state_dict()["state"], "optim/", out)
    return out


def init_optimizer_state(optimizer: Any) -> None:
    """Create the lazy state (e.g. Adam moments) of every part of a ``CombinedOptimizer`` that
    has none yet, so that a checkpoint can be loaded into it in place."""
    for _, part in getattr(optimizer, "optimizers", [("", optimizer)]):
        if not part.state and hasattr(part, "init_state"):
            part.init_state()


def _pieces(value: Stateful, main: bool) -> list[tuple[list[int], torch.Tensor]]:
    if isinstance(value, ShardedTensor):
        return [(list(s.metadata.shard_offsets), s.tensor) for s in value.local_shards()]
    return [([0] * value.dim(), value)] if main else []


def save_sharded(folder: str | Path, tensors: dict[str, Stateful], rank: int) -> None:
    """Write this rank's part of ``tensors`` into ``folder`` (every rank calls it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, torch.Tensor] = {}
    manifest: dict[str, Any] = {}
    for key, value in tensors.items():
        pieces = []
        for offsets, tensor in _pieces(value, rank == 0):
            name = f"{key}@{','.join(map(str, offsets))}"
            data[name] = tensor.detach().cpu().contiguous()
            pieces.append({"name": name, "offsets": offsets, "sizes": list(tensor.shape)})
        if pieces:
            manifest[key] = {"size": list(value.size()), "dtype": str(value.dtype).removeprefix("torch."), "pieces": pieces}
    save_file(data, str(folder / f"rank-{rank:05d}.safetensors"))
    (folder / f"rank-{rank:05d}.json").write_text(json.dumps({"tensors": manifest}))


def _overlap(t_off: list[int], t_size: list[int], s_off: list[int], s_size: list[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    target, source = [], []
    for to, ts, so, ss in zip(t_off, t_size, s_off, s_size):
        lo, hi = max(to, so), min(to + ts, so + ss)
        if lo >= hi:
            return None
        target.append(slice(lo - to, hi - to))
        source.append(slice(lo - so, hi - so))
    return tuple(target), tuple(source)


@torch.no_grad()
def load_sharded(folder: str | Path, tensors: dict[str, Stateful]) -> None:
    """Fill ``tensors`` in place from a checkpoint folder; every element must be covered."""
    folder = Path(folder)
    manifests = sorted(folder.glob("rank-*.json"))
    if not manifests:
        raise FileNotFoundError(f"{folder}: no rank-*.json manifest (not a sharded checkpoint)")
    saved: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in manifests:
        for key, entry in json.loads(path.read_text())["tensors"].items():
            saved.setdefault(key, []).extend((path.with_suffix(".safetensors"), p) for p in entry["pieces"])
    missing = sorted(set(tensors) - set(saved))
    if missing:
        raise KeyError(f"{folder}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
    handles: dict[Path, Any] = {}
    try:
        for key, value in tensors.items():
            for offsets, target in _pieces(value, main=True):
                covered = 0
                for file, piece in saved[key]:
                    hit = _overlap(offsets, list(target.shape), piece["offsets"], piece["sizes"])
                    if hit is None:
                        continue
                    if file not in handles:
                        handles[file] = safe_open(str(file), framework="pt")
                    source = handles[file].get_slice(piece["name"])[hit[1]] if target.dim() else handles[file].get_tensor(piece["name"])
                    target[hit[0]].copy_(source)
                    covered += int(target[hit[0]].numel())
                if covered != target.numel():
                    raise ValueError(f"{folder}: '{key}' covers {covered} of {target.numel()} elements of a local piece")
    finally:
        handles.clear()
