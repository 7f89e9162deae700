"""Process-group set-up and TorchRec sharding of a model with fused sparse optimizers."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.config import TrainingConfig
from recsys.embeddings.base import EmbeddingMethod
from recsys.training.checkpoint import load_plain_state_dict, plain_state_dict


def quiet_torchrec() -> None:
    """Silence TorchRec's planner warnings about CPU topologies (they do not apply here)."""
    for name in ("torchrec.distributed.planner", "torchrec.distributed.planner.types", "torchrec.distributed.planner.storage_reservations", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\..*")
    fx_log = logging.getLogger("torch.fx._symbolic_trace")
    if not any(isinstance(f, FxTracingNotice) for f in fx_log.filters):
        fx_log.addFilter(FxTracingNotice())


class FxTracingNotice(logging.Filter):
    """Drops torch's one-time "is_fx_tracing will return true for both ..." notice, logged when
    TorchRec's KeyedTensor regrouping asks whether it is being traced (we never trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("is_fx_tracing will return true")


SPARSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
}
ADAPTIVE_SPARSE_OPTIMIZERS = frozenset({"adagrad", "rowwise_adagrad"})  # take ``sparse_eps``
DENSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_process_group() -> bool:
    """Start a one-process gloo group when none exists; returns True if this call started it."""
    if dist.is_initialized():
        return False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    return True


@contextmanager
def process_group() -> Iterator[None]:
    """A one-process gloo group (``ensure_process_group``) for the block, destroyed after it if started here."""
    started = ensure_process_group()
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def embedding_collections(module: nn.Module) -> list[EmbeddingBagCollection]:
    """Every stock EBC inside ``module`` (the tables that TorchRec shards and fuses)."""
    return [m for m in module.modules() if type(m) is EmbeddingBagCollection]


def plan_sharding(model: nn.Module, sharding_type: str, world_size: int) -> ShardingPlan:
    """A plan that puts every table on fbgemm's fused kernel with ``sharding_type``.

    Left alone, the planner makes small tables data-parallel with the dense kernel, which
    silently drops the fused sparse optimizer; every table is constrained here instead.
    Table widths must be multiples of 4 (TorchRec's sharding asserts it); others are refused
    here, by name, before the planner fails deep inside.
    """
    narrow = [
        f"'{cfg.name}' ({cfg.embedding_dim})" for ebc in embedding_collections(model) for cfg in ebc.embedding_bag_configs() if cfg.embedding_dim % 4
    ]
    if narrow:
        raise ValueError(
            f"TorchRec shards only tables whose width is a multiple of 4; not {', '.join(narrow)}: "
            "change model.embedding_dim or the method's widths (e.g. embedding.options.chunk_dim)"
        )
    constraints = {
        cfg.name: ParameterConstraints(sharding_types=[sharding_type], compute_kernels=[EmbeddingComputeKernel.FUSED.value])
        for ebc in embedding_collections(model)
        for cfg in ebc.embedding_bag_configs()
    }
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device="cpu"), constraints=constraints, debug=False)
    sharders = get_default_sharders()
    if world_size > 1:
        return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    return planner.plan(model, sharders)


@dataclass
class ShardedModel:
    """A model wrapped by DMP, with the optimizer over fused sparse and dense parameters."""

    module: DistributedModelParallel
    optimizer: CombinedOptimizer


def shard(model: nn.Module, embedding: nn.Module, cfg: TrainingConfig, device: torch.device | None = None) -> ShardedModel:
    """Fuse the sparse optimizer into the backward of ``embedding``'s tables and shard with DMP.

    Sparse tables use fbgemm's fused optimizers (on CPU: exact SGD / Adagrad / row-wise
    Adagrad); parameters the method lists in ``separate_optimizers()`` get those optimizers;
    all other parameters use ``cfg.dense_optimizer``.
    """
    quiet_torchrec()
    device = device or torch.device("cpu")
    initial = plain_state_dict(model)
    sparse_params = [p for ebc in embedding_collections(embedding) for p in ebc.parameters()]
    # no weight decay here: fbgemm's fused optimizers apply none unless a decay mode is set, and
    # with the L2 mode the CPU kernels left a quickstart run bit-identical; rare rows are instead
    # kept out by the vocabulary's min_count
    sparse_kwargs: dict[str, float] = {"lr": cfg.sparse_lr}
    if cfg.sparse_optimizer in ADAPTIVE_SPARSE_OPTIMIZERS:
        sparse_kwargs["eps"] = cfg.sparse_eps
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[cfg.sparse_optimizer], sparse_params, sparse_kwargs)
    plan = plan_sharding(model, cfg.sharding, dist.get_world_size())
    dmp = DistributedModelParallel(model, device=device, plan=plan)
    load_plain_state_dict(dmp, initial)  # DMP re-initialises sharded tables; keep the method's own init
    dense_cls = DENSE_OPTIMIZERS[cfg.dense_optimizer]
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    separate = _separate_optimizers(embedding, dense_params)
    dense = (
        [KeyedOptimizerWrapper(dense_params, lambda params: dense_cls(params, lr=cfg.dense_lr, weight_decay=cfg.weight_decay))]
        if dense_params
        else []
    )
    return ShardedModel(dmp, CombinedOptimizer([dmp.fused_optimizer, *separate, *dense]))


def _separate_optimizers(embedding: nn.Module, dense_params: dict[str, nn.Parameter]) -> list[KeyedOptimizerWrapper]:
    """Optimizers a method asks for its own parameters (``EmbeddingMethod.separate_optimizers()``:
    a list of ``(parameters, optimizer factory)``, e.g. OptEmbed's plain-SGD thresholds);
    those parameters are taken out of ``dense_params``. A stock EBC asks for none."""
    wrappers = []
    for params, factory in embedding.separate_optimizers() if isinstance(embedding, EmbeddingMethod) else []:
        wanted = {id(p) for p in params}
        own = {name: p for name, p in dense_params.items() if id(p) in wanted}
        if len(own) != len(wanted):
            raise ValueError(f"{len(wanted) - len(own)} parameter(s) of a separate optimizer are not dense parameters of the model")
        for name in own:
            del dense_params[name]
        wrappers.append(KeyedOptimizerWrapper(own, factory))
    return wrappers
