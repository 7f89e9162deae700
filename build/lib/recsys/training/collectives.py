"""Small collectives over the default process group (gloo or NCCL) that keep ranks consistent.

Every function is a no-op returning its input when no group is initialised or the world has
one process, so the single-process path calls them unconditionally.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast_tensors(tensors: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``src``'s tensors on every rank (same keys, shapes and dtypes), e.g. a method's
    decisions after a search, so that ranks cannot drift apart."""
    if world()[1] == 1:
        return tensors
    out: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        value = tensors[key].detach().clone().contiguous()
        dist.broadcast(value, src=src)
        out[key] = value
    return out


def gather_rows(values: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``[n_r, k]`` float array in rank order, on every rank
    (padded ``all_gather``: ranks may hold different row counts)."""
    if world()[1] == 1:
        return values
    _, size = world()
    local = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    count = torch.tensor([local.shape[0]], dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts)]).numpy()


def replicated_mismatches(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Keys of tensors that should be identical on all ranks but are not: each rank's SHA-256
    of every tensor's bytes (dtype and shape included), compared exactly through one
    ``all_gather``; a key missing on some rank counts as a mismatch."""
    if world()[1] == 1:
        return []
    keys = sorted(tensors)
    digests = torch.tensor([_digest(k, tensors[k]) for k in keys] or [0], dtype=torch.int64)
    count = torch.tensor([len(keys)], dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world()[1])]
    dist.all_gather(counts, count)
    if len({int(c) for c in counts}) > 1:
        return keys or ["<keys>"]
    gathered = [torch.empty_like(digests) for _ in range(world()[1])]
    dist.all_gather(gathered, digests)
    differs = (torch.stack(gathered) != digests).any(0)
    return [k for k, d in zip(keys, differs.tolist()) if d]


def _digest(key: str, value: torch.Tensor) -> int:
    import hashlib

    t = value.detach().cpu().contiguous()
    h = hashlib.sha256(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return int.from_bytes(h.digest()[:8], "little", signed=True)
