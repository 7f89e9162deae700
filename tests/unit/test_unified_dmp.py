"""``unified`` sharded by TorchRec over 2 processes (gloo, CPU): same outputs and SGD step as unsharded.

Each rank builds the method with the same seed, shards it with ``recsys.training.distributed.plan_sharding``
(every table on the fused kernel, table-wise or column-wise), loads the unsharded state, and
looks up its own batch. TorchRec averages the sharded tables' gradients over ranks (as DDP
does for dense ones: ``comm_ops`` gradient division), so after one fused SGD step every local
shard must equal the unsharded table stepped on the mean of both ranks' losses.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings import EmbeddingMethod
from recsys.training.checkpoint import load_plain_state_dict
from recsys.training.distributed import free_port, plan_sharding, quiet_torchrec
from tests.unit.test_unified import CTX, raw_kjt, unified

WORLD = 2
LR = 0.1
BATCH = 8


class Holder(nn.Module):
    """The method's pooled output, flattened."""

    def __init__(self, method: EmbeddingMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.method(features).values()


def _target(rank: int, width: int) -> torch.Tensor:
    return torch.randn(BATCH, width, generator=torch.Generator().manual_seed(100 + rank))


def _worker(rank: int, port: int, sharding: str, chunk_dim: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        quiet_torchrec()
        method = unified(CTX, seed=0, num_tables=2, exact_below=4, chunk_dim=chunk_dim, chunks=2)
        reference = copy.deepcopy(method)
        apply_optimizer_in_backward(torch.optim.SGD, method.ebc.parameters(), {"lr": LR})
        model = Holder(method)
        plan = plan_sharding(model, sharding, WORLD)
        kinds = {p.sharding_type for module_plan in plan.plan.values() for p in module_plan.values()}
        assert kinds == {sharding}, plan
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
        load_plain_state_dict(dmp, {f"method.{k}": v for k, v in reference.state_dict().items()})
        assert type(dmp.module.method.ebc).__name__ == "ShardedEmbeddingBagCollection"
        assert dmp.module.method.memory_bytes() == reference.memory_bytes(), "accounting must survive sharding"

        width = sum(method.output_dims().values())
        kjts = [raw_kjt(CTX, BATCH, seed=r) for r in range(WORLD)]
        out = dmp(kjts[rank])
        torch.testing.assert_close(out, reference(kjts[rank]).values(), rtol=1e-5, atol=1e-6)

        (out * _target(rank, width)).sum().backward()
        loss = sum((reference(kjts[r]).values() * _target(r, width)).sum() for r in range(WORLD)) / WORLD
        loss.backward()
        stepped = {f"method.{k}": (p - LR * p.grad).detach() for k, p in reference.named_parameters()}
        shards, narrow = 0, 0
        for key, value in dmp.state_dict().items():
            for shard in value.local_shards():
                index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
                torch.testing.assert_close(shard.tensor, stepped[key][index], rtol=1e-5, atol=1e-6)
                shards += 1
                narrow += shard.metadata.shard_sizes[1] < value.size(1)
        held = torch.tensor([shards, narrow])
        dist.all_reduce(held)
        assert int(held[0]) >= len(stepped), "every table must be held by some rank"
        assert (int(held[1]) > 0) == (sharding == "column_wise"), "column-wise must split some table's columns"
        dist.barrier()  # neither rank tears its gloo connections down while the other still uses them
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharding,chunk_dim", [("table_wise", 8), ("column_wise", 256)])
def test_two_process_sharding_matches_unsharded(sharding: str, chunk_dim: int) -> None:
    """Column-wise uses 256-wide chunks: the planner splits columns in pieces of at least 128."""
    mp.start_processes(_worker, args=(free_port(), sharding, chunk_dim), nprocs=WORLD, join=True, start_method="spawn")
