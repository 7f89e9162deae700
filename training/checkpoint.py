"""Model weights to and from safetensors (no pickle), for sharded (DMP) or plain modules.

``plain_state_dict`` gathers every ShardedTensor of a one-process DMP into a full tensor;
``load_plain_state_dict`` copies full tensors back into the (possibly sharded) module in place.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _gather(value: ShardedTensor) -> torch.Tensor:
    full = torch.zeros(value.size(), dtype=value.dtype)
    for shard in value.local_shards():
        index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        full[index] = shard.tensor.detach().cpu()
    return full


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors of every entry of ``module.state_dict()`` (one process holds all shards)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if isinstance(value, ShardedTensor):
            out[key] = _gather(value)
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


def save_weights(module: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in plain_state_dict(module).items()}, str(tmp))
    tmp.replace(path)
    return path


def load_weights(module: nn.Module, path: str | Path) -> None:
    load_plain_state_dict(module, load_file(str(path)))
