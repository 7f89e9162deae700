"""Model weights to and from safetensors (no pickle), for sharded (DMP) or plain modules.

``plain_state_dict`` gathers every ShardedTensor into a full tensor (with several ranks: on
rank 0, a collective every rank must call); ``load_plain_state_dict`` copies full tensors back
into the (possibly sharded) module in place. ``save_weights`` writes on rank 0 and waits for
it on every rank, so each rank can ``load_weights`` the file right after.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys.sharded import sharded_tensor_access
from recsys.storage import Location, StoragePath, load_tensors, location, save_tensors
from recsys.training.collectives import barrier, world


def _gather(value: ShardedTensor) -> torch.Tensor | None:
    rank, size = world()
    if size > 1:
        out = torch.zeros(value.size(), dtype=value.dtype) if rank == 0 else None
        value.gather(dst=0, out=out)
        return out
    full = torch.zeros(value.size(), dtype=value.dtype)
    for shard in value.local_shards():
        index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        full[index] = shard.tensor.detach().cpu()
    return full


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors of every entry of ``module.state_dict()`` (with several ranks, sharded
    entries are complete on rank 0 only and absent elsewhere)."""
    with sharded_tensor_access():
        return _plain_state_dict(module)


def _plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = _gather(value)
            if full is not None:
                out[key] = full
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().clone()
    return out


@torch.no_grad()
def load_plain_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into ``module`` in place; missing or extra keys are errors."""
    target = module.state_dict()
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    if missing or extra:
        raise KeyError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in target.items():
        src = state[key]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
                shard.tensor.copy_(src[index])
        else:
            value.copy_(src)


def save_weights(module: nn.Module, path: str | Path | StoragePath) -> Location:
    """Write the module's full weights (rank 0) to a local path or a URI; every rank waits for it."""
    path = location(path)
    state = plain_state_dict(module)
    if world()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors({k: v.contiguous() for k, v in state.items()}, path)
    barrier()
    return path


def load_weights(module: nn.Module, path: str | Path | StoragePath) -> None:
    load_plain_state_dict(module, load_tensors(location(path)))
