"""Every registered method under TorchRec ``DistributedModelParallel`` (gloo, CPU, world of 1).

The pattern the trainer uses: fuse the sparse optimizer into the backward of the method's
``ebc`` tables, wrap the model in DMP, step the remaining (data-parallel) parameters with a
dense optimizer. On CPU DMP re-initialises the sharded tables instead of copying the module's
weights (``ShardedEmbeddingBagCollection`` copies only from non-CPU devices), so the test
loads the unsharded state into the DMP model before comparing.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings import EmbeddingMethod, available_methods
from tests.unit.test_method_contract import make, random_kjt

LR = 0.01


class Holder(nn.Module):
    """The smallest model around a method: its pooled output, flattened."""

    def __init__(self, method: EmbeddingMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.method(features).values()


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    started = not dist.is_initialized()
    if started:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    if started:
        dist.destroy_process_group()


def _local(value: torch.Tensor) -> torch.Tensor:
    """A plain copy of a (possibly sharded) state tensor; world of 1: the one local shard."""
    shards = getattr(value, "local_shards", None)
    return (shards()[0].tensor if shards is not None else value).detach().clone()


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, RowWiseAdagrad], ids=["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("name", available_methods())
def test_method_under_dmp(process_group: None, name: str, optimizer: type[torch.optim.Optimizer]) -> None:
    method = make(name)
    reference = copy.deepcopy(method)
    kjt = random_kjt(name, 16)
    target = torch.randn(16, sum(method.output_dims().values()), generator=torch.Generator().manual_seed(5))

    apply_optimizer_in_backward(optimizer, method.ebc.parameters(), {"lr": LR})
    model = DistributedModelParallel(Holder(method), device=torch.device("cpu"))
    state = {f"method.{k}": v for k, v in reference.state_dict().items()}
    model.load_state_dict(dict(state))  # a copy: DMP prefixes the keys in place when it wraps dense parameters in DDP
    before = {k: _local(v) for k, v in model.state_dict().items()}
    assert before.keys() == state.keys()

    out = model(kjt)
    expected = reference(kjt).values()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    (out * target).sum().backward()
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    if dense:
        KeyedOptimizerWrapper(dense, lambda params: optimizer(params, lr=LR)).step()
    after = {k: _local(v) for k, v in model.state_dict().items()}
    for k in before:
        if before[k].is_floating_point():  # weights; integer/bool buffers (e.g. dsl's masks) may stay
            assert not torch.equal(before[k], after[k]), f"{k} did not change after a step"

    if optimizer is torch.optim.SGD:
        (expected * target).sum().backward()
        for k, p in reference.named_parameters():
            torch.testing.assert_close(after[f"method.{k}"], p.detach() - LR * p.grad, rtol=1e-5, atol=1e-7)
