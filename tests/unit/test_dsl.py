"""``dsl``: schedule, exact-count prune/regrow, budgets, mask maintenance under DMP, export.

Training tests run the real path: the sparse optimizer fused into the backward of the base's
tables, the model wrapped in TorchRec ``DistributedModelParallel`` (one-process gloo group),
every table on fbgemm's fused kernel, so no table weight has a ``.grad``.
"""

from __future__ import annotations

import copy
import math
import os
import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings import FeatureInfo, MethodContext, available_methods, build_method
from recsys.embeddings.dsl import DSLEmbedding
from recsys.embeddings.dsl_schedule import Schedule
from recsys.embeddings.sparse_ops import _select, prune_regrow, random_mask, remask, table_views, update_ratio
from recsys.embeddings.sparse_serving import csr_bytes
from recsys.training.checkpoint import load_plain_state_dict, plain_state_dict
from recsys.training.distributed import embedding_collections, plan_sharding, quiet_torchrec
from tests.unit.test_method_contract import random_kjt

D = 8
CTX = MethodContext(
    features=(
        FeatureInfo("A", 40),
        FeatureInfo("B", 30, multi_valued=True, pooling=PoolingType.MEAN),
        FeatureInfo("C", 200),
    ),
    embedding_dim=D,
)
ID_SCHEME_OF = {"full": "full", "hash": "hash", "unified": "hash"}  # a method whose id scheme random_kjt follows


def dsl(ctx: MethodContext = CTX, torch_seed: int = 0, **options: object) -> DSLEmbedding:
    """The paper's schedule unless a test sets ``ramp`` / ``freeze``: the target density from step 0, no freeze."""
    torch.manual_seed(torch_seed)
    options = {"ramp": 0.0, "freeze": 1.0, **options}
    method = build_method("dsl", ctx, options)
    assert isinstance(method, DSLEmbedding)
    return method


def kjt(base: str, seed: int, batch: int = 32) -> KeyedJaggedTensor:
    return random_kjt(ID_SCHEME_OF[base], batch, seed=seed, ctx=CTX)


class Holder(nn.Module):
    def __init__(self, method: nn.Module) -> None:
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
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
        dist.init_process_group("gloo", rank=0, world_size=1)
    quiet_torchrec()
    yield
    if started:
        dist.destroy_process_group()


def shard(method: nn.Module, optimizer: type[torch.optim.Optimizer] = RowWiseAdagrad, sharding: str = "table_wise") -> DistributedModelParallel:
    """The trainer's recipe: fused sparse optimizer, every table on the fused kernel, method init kept."""
    model = Holder(method)
    initial = plain_state_dict(model)
    apply_optimizer_in_backward(optimizer, [p for e in embedding_collections(method) for p in e.parameters()], {"lr": 0.1})
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan_sharding(model, sharding, 1))
    load_plain_state_dict(dmp, initial)
    return dmp


def step(dmp: nn.Module, method: nn.Module, base: str, i: int, end: bool = True) -> torch.Tensor:
    """One training step on batch ``i`` (``end=False``: stop before ``on_train_step``); returns the output."""
    out = dmp(kjt(base, seed=100 + i))
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(i))
    ((out - target) ** 2).mean().backward()
    if end:
        method.on_train_step(i)
    return out.detach()


def weights_and_masks(dmp: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, mask) of every table, read through the checkpoint path (independent of dsl's views)."""
    state = plain_state_dict(dmp)
    pairs = []
    for key, mask in state.items():
        if ".masks." in f".{key}":
            path, table = key.split("masks.")[1].split("__", 1)
            pairs.append((state[f"method.base.{path}.embedding_bags.{table}.weight"], mask))
    assert pairs
    return pairs


def test_update_ratio_schedule() -> None:
    assert update_ratio(0, 1000) == pytest.approx(0.5)
    assert update_ratio(500, 1000) == pytest.approx(0.2525)
    assert update_ratio(1000, 1000) == pytest.approx(0.005)
    assert update_ratio(5000, 1000) == pytest.approx(0.005)


def test_prune_regrow_exact_with_ties() -> None:
    mask = random_mask(50, 4, 60, seed=1).view(-1)
    equal = torch.ones(200)  # every |w| ties
    growth = torch.zeros(200)  # every gradient ties
    new = prune_regrow(mask, equal, growth, 25, salt=3)
    assert int(new.sum()) == 60
    assert torch.equal(new, prune_regrow(mask, equal, growth, 25, salt=3))
    growth[[0, 1, 2]] = 5.0
    mask[[0, 1, 2]] = False
    new = prune_regrow(mask, equal, growth, 10, salt=3)
    assert new[[0, 1, 2]].all() and int(new.sum()) == int(mask.sum())
    magnitude = torch.arange(200, dtype=torch.float32)
    new = prune_regrow(mask, magnitude, None, 5, salt=0)
    assert (mask & ~new).nonzero().squeeze(1).tolist() != [] and int(new.sum()) == int(mask.sum())


@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("k", [1, 37, 900, 2999])
def test_selection_is_the_exact_ranking(k: int, largest: bool) -> None:
    """The sampled bound only narrows the pool: the result is the sort by (score, tie-break)."""
    gen = torch.Generator().manual_seed(k)
    score = torch.randint(0, 50, (300_000,), generator=gen).float()  # many ties
    eligible = random_mask(300_000, 1, 3000, seed=k).view(-1)
    score[~eligible] = -1.0 if largest else math.inf
    chosen = _select(score, k, 3000, salt=9, largest=largest)
    tie = (((torch.arange(300_000) * 0x9E3779B1) & (2**31 - 1)) + 9) & (2**31 - 1)
    ranked = sorted(eligible.nonzero().squeeze(1).tolist(), key=lambda i: (float(score[i]), int(tie[i])), reverse=largest)
    assert sorted(chosen.tolist()) == sorted(ranked[:k])


def test_masks_exact_seeded_and_applied() -> None:
    a, b, c = dsl(density=0.25), dsl(density=0.25, torch_seed=5), dsl(density=0.25, seed=1)
    for i, t in enumerate(a._tables):
        assert int(a.mask(i).sum()) == math.floor(0.25 * t.rows * t.dim)
        assert torch.equal(a.mask(i), b.mask(i))
        assert torch.equal(a.full_weight(i), a.full_weight(i) * a.mask(i))
    assert any(not torch.equal(a.mask(i), c.mask(i)) for i in range(3))
    assert {k for k in a.state_dict() if k.startswith("masks.")} == {"masks.ebc__A", "masks.ebc__B", "masks.ebc__C"}


@pytest.mark.parametrize("global_budget", [False, True])
@pytest.mark.parametrize("compression", [1.5, 3, 6])
def test_budget_sets_density(compression: float, global_budget: bool) -> None:
    ctx = CTX.with_budget(compression=compression)
    method = dsl(ctx=ctx, global_budget=global_budget)
    assert method.memory_bytes() <= ctx.budget_bytes  # type: ignore[operator]
    assert method.memory_bytes() == sum(v.numel() * v.element_size() for v in method.compact_state().values())
    with pytest.raises(ValueError, match=f"budget of {ctx.budget_bytes}"):
        dsl(ctx=ctx, density=1.0)


def test_budget_too_small_is_clear() -> None:
    ctx = CTX.with_budget(budget_bytes=100)
    with pytest.raises(ValueError, match="budget of 100 bytes"):
        dsl(ctx=ctx)


def test_dense_format_when_not_smaller() -> None:
    method = dsl(density=1.0)
    assert all(k.endswith(".weight") for k in method.compact_state())
    assert method.memory_bytes() == build_method("full", CTX).memory_bytes()
    assert csr_bytes(10, 8, 80) > 10 * 8 * 4


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_hook_gradient_equals_dense_gradient(density: float) -> None:
    """Unsharded, plain autograd: the scatter-added pooled gradient is the table's ``.grad``
    (at density 1 for every table; when sparse, masked, for the single-valued ones)."""
    method = dsl(density=density)
    method.train()
    out = method(kjt("full", seed=4)).values()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    for i, t in enumerate(method._tables):
        grad = method.base.ebc.embedding_bags[t.name].weight.grad
        if density == 1.0:
            torch.testing.assert_close(method.accumulated(i), grad, rtol=1e-6, atol=1e-7)
        elif t.name != "B":
            torch.testing.assert_close(method.accumulated(i) * method.mask(i), grad, rtol=1e-6, atol=1e-7)
            assert method.accumulated(i)[~method.mask(i)].abs().sum() > 0, "inactive weights have a regrowth signal"


def test_hook_gradient_single_valued_sharded_and_plain(process_group: None) -> None:
    """One-value bags (the batch-major fast path): the same accumulator unsharded and under DMP,
    equal to the dense gradient at density 1."""
    ctx = MethodContext(tuple(FeatureInfo(n, c) for n, c in (("Z", 30), ("A", 40), ("M", 25))), D)
    features = random_kjt("full", 32, seed=3, ctx=ctx)
    target = torch.randn(32, 3 * D, generator=torch.Generator().manual_seed(1))
    plain, sharded = dsl(ctx=ctx, density=1.0), dsl(ctx=ctx, density=1.0)
    plain.train()
    (plain(features).values() * target).sum().backward()
    dmp = shard(sharded, torch.optim.SGD)
    (dmp(features) * target).sum().backward()
    for i, t in enumerate(plain._tables):
        grad = plain.base.ebc.embedding_bags[t.name].weight.grad
        torch.testing.assert_close(plain.accumulated(i), grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(sharded.accumulated(i), grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_live_views_sharded_and_plain(process_group: None, sharding: str) -> None:
    method = dsl(ctx=MethodContext(CTX.features, 16), density=1.0)
    features = kjt("full", seed=2)
    plain = table_views(method.base.ebc)
    assert plain["A"][0][1].data_ptr() == method.base.ebc.embedding_bags["A"].weight.data_ptr()
    dmp = shard(method, torch.optim.SGD, sharding)
    dmp.eval()
    before = dmp(features).detach().clone()
    with torch.no_grad():
        for pieces in table_views(method.base.ebc).values():
            for _, piece in pieces:
                piece.mul_(2.0)
    torch.testing.assert_close(dmp(features), 2 * before)


def test_remask_on_split_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables split into row and column pieces (as on several ranks): offsets are honoured."""
    method = dsl(density=0.5)
    full = {t: e.weight.detach() for t, e in method.base.ebc.embedding_bags.items()}

    def pieces(module: nn.Module) -> dict[str, list[tuple[tuple[slice, ...], torch.Tensor]]]:
        rows = {t: w.shape[0] for t, w in full.items()}
        cuts = {t: [(slice(0, 7), slice(0, 3)), (slice(0, 7), slice(3, D)), (slice(7, n), slice(0, D))] for t, n in rows.items()}
        return {t: [(sl, full[t][sl]) for sl in cuts[t]] for t in full}

    monkeypatch.setattr("recsys.embeddings.sparse_ops.table_views", pieces)
    method._scratch.clear()
    with torch.no_grad():
        for w in full.values():
            w.fill_(1.0)
    assert torch.equal(method.full_weight(0), torch.ones(40, D))
    remask(method._views(0), method.mask(0), torch.tensor([1, 8, 30]))
    expected = torch.ones(40, D)
    expected[[1, 8, 30]] = method.mask(0)[[1, 8, 30]].float()
    assert torch.equal(full["A"], expected)
    for i in range(3):
        remask(method._views(i), method.mask(i))
    assert all(torch.equal(full[t.name], method.mask(i).float()) for i, t in enumerate(method._tables))


@pytest.mark.parametrize("regrow", ["accumulated", "batch"])
@pytest.mark.parametrize("global_budget", [False, True])
def test_training_keeps_invariants(process_group: None, global_budget: bool, regrow: str) -> None:
    method = dsl(density=0.3, update_every=3, global_budget=global_budget, regrow=regrow)
    dmp = shard(method)
    assert dmp.module.method is method
    total, counts = 10, method.active_counts()
    method.on_train_begin(total)
    for i in range(total):
        before = [m.clone() for _, m in weights_and_masks(dmp)]
        step(dmp, method, "full", i, end=False)
        assert bool(method._acc) == (regrow == "accumulated" or (i + 1) % 3 == 0), "'batch' records the update step only"
        method.on_train_step(i)
        assert all(p.grad is None for e in embedding_collections(method) for p in e.parameters())
        pairs = weights_and_masks(dmp)
        for w, m in pairs:
            assert torch.equal(w, w * m), "W = W ⊙ M after every step"
        if global_budget:
            assert sum(method.active_counts()) == sum(counts)
        else:
            assert method.active_counts() == counts
        if (i + 1) % 3 == 0:
            grown = [m & ~b for (_, m), b in zip(pairs, before)]
            assert sum(int(g.sum()) for g in grown) > 0
            assert all(w[g].abs().sum() == 0 for (w, _), g in zip(pairs, grown)), "regrown weights start at 0"
        else:
            assert all(torch.equal(m, b) for (_, m), b in zip(pairs, before))
        assert (method._acc == {}) == (regrow == "batch" or (i + 1) % 3 == 0)
    assert method.updates == total // 3


def test_fix_never_changes_masks(process_group: None) -> None:
    method = dsl(density=0.3, update_every=2, mode="fix")
    dmp = shard(method)
    first = [m.clone() for _, m in weights_and_masks(dmp)]
    method.on_train_begin(6)
    for i in range(6):
        step(dmp, method, "full", i)
        pairs = weights_and_masks(dmp)
        assert all(torch.equal(m, f) for (_, m), f in zip(pairs, first))
        assert all(torch.equal(w, w * m) for w, m in pairs)
    assert method.updates == 0 and method._acc == {}


def test_single_valued_inactive_weights_never_move(process_group: None) -> None:
    """Forward masking: inside the fused step itself, before any re-masking."""
    method = dsl(density=0.3, update_every=100)
    dmp = shard(method, torch.optim.Adagrad)
    method.on_train_begin(100)
    out = dmp(kjt("full", seed=1))
    out.square().sum().backward()
    state = plain_state_dict(dmp)
    for table in ("A", "C"):
        w, m = state[f"method.base.ebc.embedding_bags.{table}.weight"], state[f"method.masks.ebc__{table}"]
        assert w[~m].abs().sum() == 0
    optimizer_state = method.base.ebc.fused_optimizer.state_dict()["state"]
    momentum = optimizer_state["embedding_bags.A.weight"]["A.momentum1"].local_shards()[0].tensor
    assert momentum[~state["method.masks.ebc__A"]].abs().sum() == 0 and momentum.abs().sum() > 0


@pytest.mark.parametrize("optimizer", [torch.optim.Adagrad, RowWiseAdagrad], ids=["adagrad", "rowwise_adagrad"])
def test_optimizer_state_reset_for_regrown(process_group: None, optimizer: type[torch.optim.Optimizer]) -> None:
    method = dsl(density=0.2, update_every=1000)
    dmp = shard(method, optimizer)
    method.on_train_begin(1000)
    for i in range(3):
        step(dmp, method, "full", i)
    fused = method.base.ebc.fused_optimizer

    def momentum(table: str) -> torch.Tensor:
        return fused.state_dict()["state"][f"embedding_bags.{table}.weight"][f"{table}.momentum1"].local_shards()[0].tensor.clone()

    before_masks = [method.mask(i).clone() for i in range(3)]
    before_state = {t.name: momentum(t.name) for t in method._tables}
    method.update(0.5)
    for i, t in enumerate(method._tables):
        grown = method.mask(i) & ~before_masks[i]
        state = momentum(t.name)
        if state.dim() == 2:
            assert grown.any() and state[grown].abs().sum() == 0
            assert torch.equal(state[~grown], before_state[t.name][~grown])
        else:
            revived = grown.any(1) & ~before_masks[i].any(1)
            assert torch.all(state[revived] == 0)
            assert torch.equal(state[~revived], before_state[t.name][~revived])


def test_density_one_reproduces_dense_training(process_group: None) -> None:
    torch.manual_seed(0)
    full = build_method("full", CTX)
    method = dsl(density=1.0, update_every=2)
    method.base.load_state_dict(full.state_dict())
    a, b = shard(full), shard(method)
    full.on_train_begin(6)
    method.on_train_begin(6)
    for i in range(6):
        assert torch.equal(step(a, full, "full", i), step(b, method, "full", i))
    assert method.updates == 3
    sa, sb = plain_state_dict(a), plain_state_dict(b)
    for key, value in sa.items():
        assert torch.equal(value, sb[key.replace("method.", "method.base.", 1)])


@pytest.mark.parametrize("base", ["full", "hash", "unified"])
def test_compact_lookup_equals_eval_forward(process_group: None, base: str) -> None:
    if base not in available_methods():
        pytest.skip(f"{base} is not registered")
    options = {"num_tables": 2} if base == "unified" else {}
    method = dsl(density=0.2, update_every=2, base={"method": base, "options": options})
    reference = copy.deepcopy(method)
    dmp = shard(method)
    method.on_train_begin(4)
    for i in range(4):
        step(dmp, method, base, i)
    compact = method.compact_state()
    assert method.memory_bytes() == sum(v.numel() * v.element_size() for v in compact.values())
    features = kjt(base, seed=999, batch=64)
    dmp.eval()
    with torch.no_grad():
        sharded_out = dmp(features)
    served = method.compact_lookup(compact, features)
    torch.testing.assert_close(served.values(), sharded_out, rtol=0, atol=1e-6)
    exported = method.export()
    assert {k for k in exported.state if k.startswith("tables.")} == {f"tables.{k}" for k in compact}
    with torch.no_grad():
        assert torch.equal(DSLEmbedding.from_export(CTX, exported)(features).values(), served.values())
    load_plain_state_dict(Holder(reference), plain_state_dict(dmp))  # the same state, unsharded (stock EBCs)
    reference.eval()
    with torch.no_grad():
        assert torch.equal(served.values(), reference(features).values()), "bit for bit against the stock EBC"


def test_unified_shared_rows_accumulate_every_read(process_group: None) -> None:
    if "unified" not in available_methods():
        pytest.skip("unified is not registered")
    method = dsl(density=1.0, base={"method": "unified", "options": {"num_tables": 1}})
    method.train()
    out = method(kjt("unified", seed=5)).values()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    grad = method.base.ebc.embedding_bags["unified_0"].weight.grad
    torch.testing.assert_close(method.accumulated(0), grad, rtol=1e-6, atol=1e-7)


def test_multi_phase_base_is_refused() -> None:
    if "optembed" not in available_methods():
        pytest.skip("optembed is not registered")
    with pytest.raises(ValueError, match="one-phase bases"):
        dsl(base="optembed")


def test_loaded_masks_are_used() -> None:
    """A checkpoint copied into the masks in place (as ``load_plain_state_dict`` does) reaches the stacked copy."""
    a, b = dsl(density=0.3), dsl(density=0.3, seed=1)
    b.train()
    b(kjt("full", seed=0))  # builds b's stacked masks
    load_plain_state_dict(b, plain_state_dict(a))
    stacked = torch.cat([b.mask(i) for i in range(3)]).float()
    assert torch.equal(b._stacked_mask(D), stacked) and torch.equal(stacked, torch.cat([a.mask(i) for i in range(3)]).float())


def test_hooks_follow_copies_and_require_begin() -> None:
    method = dsl(density=0.5, update_every=1)
    method.train()
    method(kjt("full", seed=0))
    clone = copy.deepcopy(method)
    clone(kjt("full", seed=0)).values().sum().backward()
    assert clone._acc and not method._acc
    with pytest.raises(RuntimeError, match="on_train_begin"):
        clone.on_train_step(0)


# ----- the schedule derived from the planned steps (dsl_schedule) ------------------------------


def test_schedule_values_for_planned_steps() -> None:
    s = Schedule.plan(total=620, update_every=None, updates=40, ramp=0.3, freeze=0.8)
    assert (s.every, s.ramp_end, s.freeze_at) == (16, 186, 496)
    assert s.density(0, 0.1) == 1.0 and s.density(186, 0.1) == 0.1 and s.density(500, 0.1) == 0.1
    assert s.density(93, 0.1) == pytest.approx(0.1 + 0.9 * 0.5**3)
    assert s.is_update(16) and not s.is_update(17) and s.is_update(186), "the ramp's end is always an update"
    assert s.is_update(496) and not s.is_update(512), "no mask change after the freeze"
    assert s.zeta(186, 0.5, 0.005) == pytest.approx(0.5) and s.zeta(496, 0.5, 0.005) == pytest.approx(0.005)
    short = Schedule.plan(total=63, update_every=None, updates=40, ramp=0.3, freeze=0.8)
    assert (short.every, short.ramp_end, short.freeze_at) == (2, 19, 50), "a short run gets as many updates as a long one"
    assert sum(short.is_update(t) for t in range(1, 64)) == 26  # every 2nd step up to 50, and 19
    paper = Schedule.plan(total=1000, update_every=100, updates=40, ramp=0.0, freeze=1.0)
    assert paper.ready(0) and [t for t in range(1, 1001) if paper.is_update(t)] == list(range(100, 1001, 100))
    with pytest.raises(ValueError, match="ramp <= freeze"):
        Schedule.plan(total=10, update_every=None, updates=4, ramp=0.9, freeze=0.5)


def test_ramp_starts_dense_and_reaches_the_target_exactly(process_group: None) -> None:
    method = dsl(density=0.25, ramp=0.5, freeze=0.75, update_every=None, updates=5)
    target = method.active_counts()
    nonzero_at_build = sum(int((w != 0).sum()) for e in embedding_collections(method) for w in e.parameters())
    assert nonzero_at_build <= sum(target), "built in its served form"
    dmp = shard(method)
    method.on_train_begin(20)  # every 4 steps, ramp until step 10, freeze at 15
    assert not method.servable() and method.memory_bytes() == build_method("dsl", CTX, {"density": 0.25}).memory_bytes()
    totals = []
    for i in range(20):
        step(dmp, method, "full", i)
        totals.append(sum(method.active_counts()))
        assert method.servable() == (i + 1 >= 10)
        for w, m in weights_and_masks(dmp):
            assert torch.equal(w, w * m)
    full = sum(t.rows * t.dim for t in method._tables)
    assert totals[0] == full, "dense until the first ramp update"
    assert totals[3] < full and totals[3] > totals[7] > sum(target), "the ramp prunes step by step"
    assert totals[9:] == [sum(target)] * 11, "the target from the ramp's end on"
    kinds = [(h["step"], h.get("ramp", False)) for h in method.history]
    assert kinds == [(4, True), (8, True), (10, True), (12, False)], "prune/regrow until the freeze (15), then fixed masks"


def test_resumed_fit_keeps_the_checkpoint_masks(process_group: None) -> None:
    method = dsl(density=0.25, ramp=0.5, freeze=0.75, update_every=None, updates=5)
    dmp = shard(method)
    method.on_train_begin(20)
    for i in range(12):
        step(dmp, method, "full", i)
    masks = [method.mask(i).clone() for i in range(3)]
    method.on_train_begin(20)
    method.on_train_resume(12)
    step(dmp, method, "full", 12)
    assert all(torch.equal(method.mask(i), m) for i, m in enumerate(masks)), "no dense restart after a resume"
    assert method.servable()


def test_ramp_after_freeze_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match=r"invalid options for method 'dsl'.*ramp \(0.9\) must not be after freeze \(0.5\)"):
        build_method("dsl", CTX, {"ramp": 0.9, "freeze": 0.5})
