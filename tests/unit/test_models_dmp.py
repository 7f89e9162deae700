"""CTR models under TorchRec's DistributedModelParallel (one-process gloo group on CPU)."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys.embeddings import MethodContext, build_method
from recsys.models import DLRM
from tests.unit.test_models import FEATURES, D, make_batch, stand_in


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plain(value: torch.Tensor) -> torch.Tensor:
    """A one-process ShardedTensor (or a tensor) as a plain tensor copy."""
    shards = value.local_shards() if hasattr(value, "local_shards") else None
    return (shards[0].tensor if shards else value).detach().clone()


DMP_CASES = [("stand_in", None), ("stand_in", "table_wise"), ("full", "table_wise")]


@pytest.mark.parametrize("method,sharding_type", DMP_CASES)
def test_dlrm_under_dmp(monkeypatch: pytest.MonkeyPatch, method: str, sharding_type: str | None) -> None:
    """Default plan (tiny tables: data_parallel, dense kernel) and table-wise (fused fbgemm kernel)."""
    started = not dist.is_initialized()  # another test may have left a one-process group up
    if started:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        embedding = stand_in() if method == "stand_in" else build_method(method, MethodContext(FEATURES, D))
        model = DLRM(embedding, num_dense=4, embedding_dim=D, dense_arch=[16], over_arch=[16])
        unsharded = copy.deepcopy(model)
        apply_optimizer_in_backward(RowWiseAdagrad, model.embedding.ebc.parameters(), {"lr": 0.05})
        plan = None
        if sharding_type is not None:
            tables = [t.name for t in model.embedding.ebc.embedding_bag_configs()]
            constraints = {t: ParameterConstraints(sharding_types=[sharding_type]) for t in tables}
            planner = EmbeddingShardingPlanner(Topology(world_size=1, compute_device="cpu"), constraints=constraints)
            plan = planner.collective_plan(model, [EmbeddingBagCollectionSharder()], dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
        # The sharded tables are freshly initialised, not copied: give the reference the same ones.
        unsharded.load_state_dict({k: _plain(v) for k, v in dmp.state_dict().items()})
        batch = make_batch(16, 4)
        pooled = dmp.module.embedding(batch.sparse_features)
        if method == "stand_in":  # passes the sharded EBC's output through, regrouped by pooling: a, c, b
            assert list(pooled.keys()) == ["a", "c", "b"]
        logits = dmp(batch.dense_features, batch.sparse_features)
        torch.testing.assert_close(logits, unsharded(batch.dense_features, batch.sparse_features))
        tables = [k for k in dmp.state_dict() if ".ebc." in k]
        before = {k: _plain(dmp.state_dict()[k]) for k in tables}
        logits.sum().backward()
        assert len(tables) == len(FEATURES)
        if sharding_type is None:  # data_parallel + dense kernel ignores the in-backward optimizer: plain grads
            grads = [p.grad for n, p in dmp.named_parameters() if ".ebc." in n]
            assert len(grads) == len(FEATURES) and all(g is not None and g.abs().sum() > 0 for g in grads)
        else:  # the fused kernel applies RowWiseAdagrad inside backward
            assert all(not torch.equal(before[k], _plain(dmp.state_dict()[k])) for k in tables)
    finally:
        if started:
            dist.destroy_process_group()
