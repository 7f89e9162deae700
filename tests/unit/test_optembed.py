"""``optembed``: surrogate step, masks, thresholds, phases, accounting, export (on ``full`` and ``unified``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import TrainingConfig, load_config
from recsys.embeddings import FeatureInfo, MethodContext, Phase, build_method
from recsys.embeddings.optembed import OptEmbed
from recsys.embeddings.optembed_export import rank_bitmap, rank_bitmap_bytes, rank_lookup, table_row_norms
from recsys.embeddings.surrogate import binary_step, random_prefix_lengths, surrogate_grad
from tests.unit.test_method_contract import CTX, random_kjt

D = 16
SINGLE = MethodContext(tuple(FeatureInfo(f"S{i}", c) for i, c in enumerate([5, 300, 2000, 40])), D)
UNIFIED = {"base": {"method": "unified", "options": {"num_tables": 2, "exact_below": 3}}}
ROOT = Path(__file__).resolve().parents[2]


def make(ctx: MethodContext = CTX, seed: int = 0, **options) -> OptEmbed:
    torch.manual_seed(seed)
    method = build_method("optembed", ctx, options)
    assert isinstance(method, OptEmbed)
    return method


def kjt_for(ctx: MethodContext, batch: int, raw: bool = False, seed: int = 0) -> KeyedJaggedTensor:
    gen = torch.Generator().manual_seed(seed)
    lengths = [torch.randint(0, 4, (batch,), generator=gen) if f.multi_valued else torch.ones(batch, dtype=torch.int64) for f in ctx.features]
    values = [
        torch.randint(-(2**62), 2**62, (int(n.sum()),), generator=gen) if raw else torch.randint(0, f.cardinality, (int(n.sum()),), generator=gen)
        for f, n in zip(ctx.features, lengths)
    ]
    return KeyedJaggedTensor(keys=ctx.feature_names, values=torch.cat(values), lengths=torch.cat(lengths))


@torch.no_grad()
def prune_some(method: OptEmbed, quantile: float = 0.5) -> None:
    """Thresholds at a quantile of each field's row norms, so some rows get pruned."""
    norms = table_row_norms(method.ebc)
    for f, fields in enumerate(method.layout.table_features):
        for field in fields:
            method.threshold[field, 0] = torch.quantile(norms[method.layout.tables[f]], quantile)


def entered(source: OptEmbed, stage: str, ctx: MethodContext = CTX, **options) -> OptEmbed:
    """A fresh method in ``stage`` with ``source``'s weights and phase state (what the runner does)."""
    method = make(ctx, seed=123, **options)
    method.enter_phase(Phase(stage, kind="search" if stage == "search" else "train"))
    method.load_state_dict(source.state_dict())
    method.load_phase_state(source.phase_state())
    return method


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    from recsys.training.distributed import ensure_process_group

    started = ensure_process_group()
    yield
    if started:
        dist.destroy_process_group()


def test_surrogate_gradient_values() -> None:
    x = torch.tensor([0.2, 0.5, 1.5, -0.2, -0.5, -1.5, 0.0, 0.4, 1.0], requires_grad=True)
    y = binary_step(x)
    assert y.tolist() == [1, 1, 1, 0, 0, 0, 0, 1, 1]
    y.sum().backward()
    expected = [1.2, 0.4, 0.0, 1.2, 0.4, 0.0, 2.0, 0.4, 0.4]
    torch.testing.assert_close(x.grad, torch.tensor(expected))
    torch.testing.assert_close(surrogate_grad(torch.tensor([0.2, 0.5, 1.5])), torch.tensor([1.2, 0.4, 0.0]))


def test_prefix_lengths_average_half_the_width() -> None:
    keep = random_prefix_lengths((50_000, 4), torch.tensor([D, D, 4, 1]), seed=3)
    assert keep.min() == 1 and keep[:, :2].max() == D and keep[:, 2].max() == 4 and (keep[:, 3] == 1).all()
    assert abs(keep[:, :2].float().mean().item() - (D + 1) / 2) < 0.05
    counts = torch.bincount(keep[:, 0], minlength=D + 1)[1:].float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1


def test_supernet_training_masks_keep_half_the_columns_and_none_in_eval() -> None:
    method = make(SINGLE)
    kjt = kjt_for(SINGLE, 4000)
    out = method(kjt).values().view(4000, 4, D)
    assert abs((out != 0).sum(-1).float().mean().item() - (D + 1) / 2) < 0.2
    assert torch.equal(out, method(kjt).values().view(4000, 4, D))  # one draw per training step
    method.on_train_step(0)
    assert not torch.equal(out, method(kjt).values().view(4000, 4, D))
    method.eval()
    assert torch.equal(method(kjt).values(), method.base(kjt).values())


def test_nothing_is_pruned_at_the_start() -> None:
    method = make()
    assert (method.threshold == 0).all()
    assert all(bool(m.all()) for m in method.row_masks().values())
    method.eval()
    kjt = random_kjt("optembed", 64)
    assert torch.equal(method(kjt).values(), method.base(kjt).values())
    assert method.memory_bytes() == CTX.full_bytes and method.sparsity() == 0.0


def test_small_init_lets_a_short_run_threshold_prune_untrained_rows_of_any_table() -> None:
    """With init_bound, tables are redrawn from U(±init_bound): at t = 0.15 (80 steps of the defaults) every untrained row is pruned,
    whatever the table's size; with the base's own U(±1/√n) init the 5-, 300- and 40-row tables keep every row, the 2000-row one most."""
    method = make(SINGLE, init_bound=1e-3)
    for table in method.base.ebc.parameters():
        assert float(table.abs().max()) <= 1e-3 and float(table.abs().max()) > 0.9e-3
    own = make(SINGLE)
    torch.manual_seed(0)
    base = build_method("full", SINGLE)
    assert all(torch.equal(a, b) for a, b in zip(own.base.ebc.parameters(), base.ebc.parameters())), "by default the base's init is kept"
    with torch.no_grad():
        for m in (method, own):
            m.threshold.fill_(0.15)
    assert not any(bool(m.any()) for m in method.row_masks().values())
    kept = [float(m.float().mean()) for m in own.row_masks().values()]  # 8/√n: 3.6, 0.46, 0.18, 1.26
    assert kept[0] == kept[1] == kept[3] == 1.0 and 0 < kept[2] < 1


def test_thresholds_rise_by_their_sgd_step_without_task_gradient(process_group: None) -> None:
    from recsys.training.distributed import shard

    class AuxOnly(nn.Module):
        def __init__(self, method: OptEmbed) -> None:
            super().__init__()
            self.method, self.dense = method, nn.Linear(1, 1)

        def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
            out = self.method(kjt).values().sum() + self.dense(torch.ones(1)).sum()
            return 0 * out + self.method.aux_loss()

    alpha, lr = 0.5, 0.1
    method = make(SINGLE, alpha=alpha, threshold_lr=lr)
    sharded = shard(AuxOnly(method), method, TrainingConfig(dense_optimizer="adam", dense_lr=0.3))
    kjt = kjt_for(SINGLE, 8)
    t = method.threshold.detach().clone()
    for _ in range(3):
        loss = sharded.module(kjt)
        sharded.optimizer.zero_grad()
        loss.backward()
        sharded.optimizer.step()
        t = t + lr * alpha * torch.exp(-t)
        torch.testing.assert_close(method.threshold.detach(), t, rtol=1e-6, atol=1e-7)


def test_all_full_candidate_reproduces_the_supernet_eval_output() -> None:
    supernet = make(SINGLE)
    prune_some(supernet)
    supernet.eval()
    kjt = kjt_for(SINGLE, 256)
    expected = supernet(kjt).values()
    assert (expected.view(256, 4, D).abs().sum(-1) == 0).any(), "some looked-up rows should be pruned"
    search = entered(supernet, "search", SINGLE)
    search.set_dims((D,) * 4)
    search.eval()
    assert torch.equal(search(kjt).values(), expected)


def test_fixed_stages_train_without_thresholds_or_dimension_draws() -> None:
    supernet = make()
    prune_some(supernet, 0.3)
    retrain = entered(supernet, "retrain", retrain_weights="inherit")
    retrain.set_dims((3, 16, 7, 1))
    assert retrain.aux_loss() is None and retrain.separate_optimizers() == []
    assert not retrain.threshold.requires_grad
    kjt = random_kjt("optembed", 32)
    out = retrain(kjt).values()
    retrain.on_train_step(5)
    assert torch.equal(out, retrain(kjt).values())
    widths = (out.view(32, 4, D) != 0).sum(-1).amax(0)
    assert widths.tolist() <= [3, 16, 7, 1] and widths[2] == 7
    assert [p.name for p in retrain.phases()] == ["supernet", "search", "retrain"]
    assert retrain.phases()[2].weights == "continue" and make().phases()[2].weights == "initial"
    assert make().phases()[1].kind == "search" and make(phases=["supernet"]).phases() == [Phase("supernet")]
    with pytest.raises(ValueError, match="phases"):
        make(phases=["search", "supernet"])


def test_sparsity_and_bytes_follow_the_formulas() -> None:
    supernet = make(SINGLE)
    prune_some(supernet, 0.4)
    method = entered(supernet, "search", SINGLE)
    dims = (5, 16, 2, 9)
    method.set_dims(dims)
    masks = method.row_masks()
    kept = [int(masks[f.name].sum()) for f in SINGLE.features]
    cards = [f.cardinality for f in SINGLE.features]
    assert all(0 < k < n for k, n in zip(kept, cards))
    expected_bytes = sum(k * d * 4 + 12 * math.ceil(n / 64) for k, d, n in zip(kept, dims, cards))
    assert method.memory_bytes() == expected_bytes
    assert method.sparsity() == pytest.approx(1 - sum(k * d for k, d in zip(kept, dims)) / (sum(cards) * D))
    facts = json.loads(json.dumps(method.diagnostics()))
    assert [facts["tables"][f.name]["kept"] for f in SINGLE.features] == kept
    assert [facts["fields"][f.name]["dim"] for f in SINGLE.features] == list(dims)


def test_budget_sets_initial_dims_and_bounds_the_search() -> None:
    ctx = SINGLE.with_budget(compression=5)
    method = make(ctx)
    assert method.dims.tolist() == [3] * 4 and method.memory_bytes() <= ctx.budget_bytes
    prune_some(method, 0.2)
    search = entered(method, "search", ctx, generations=4, eval_rows=10)
    evaluated: list[int] = []

    def evaluate() -> float:
        evaluated.append(search.memory_bytes())
        return float(search.dims.sum()) / 100

    summary = search.search(evaluate)
    assert max(evaluated) <= ctx.budget_bytes
    assert summary["memory_bytes"] == search.memory_bytes() <= ctx.budget_bytes
    assert summary["evaluations"] == len(evaluated) and summary["evaluations"] + summary["cache_hits"] == 80
    assert list(summary["dims"].values()) == search.dims.tolist()
    with pytest.raises(ValueError, match=str(SINGLE.with_budget(compression=100).budget_bytes)):
        make(SINGLE.with_budget(compression=100))


def test_search_is_deterministic_for_a_seed() -> None:
    supernet = make(SINGLE)
    prune_some(supernet)
    kjt = kjt_for(SINGLE, 64)
    runs = []
    for _ in range(2):
        search = entered(supernet, "search", SINGLE, generations=2)
        search.eval()
        runs.append(search.search(lambda: float(search(kjt).values().sum())))
    assert runs[0]["dims"] == runs[1]["dims"] and runs[0]["history"] == runs[1]["history"]


def test_rank_bitmap_lookup_matches_a_cumulative_count() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (1, 63, 64, 65, 1000, 4097):
        keep = torch.rand(n, generator=gen) < 0.3
        bits, rank = rank_bitmap(keep)
        assert bits.numel() + 4 * rank.numel() == rank_bitmap_bytes(n)
        expected = torch.where(keep, torch.cumsum(keep.long(), 0) - 1, torch.full((n,), -1))
        assert torch.equal(rank_lookup(bits, rank, torch.arange(n)), expected)


@pytest.mark.parametrize("base", ["full", "unified"])
def test_compact_export_reproduces_the_eval_forward(base: str) -> None:
    options = UNIFIED if base == "unified" else {}
    supernet = make(**options)
    prune_some(supernet, 0.5)
    method = entered(supernet, "search", **options)
    method.set_dims((16, 5, 8, 3))
    method.eval()
    kjt = kjt_for(CTX, 200, raw=base == "unified", seed=4)
    expected = method(kjt).to_dict()
    exported = method.export()
    state = exported.state
    stored = sum(v.numel() * v.element_size() for k, v in state.items() if k != "dims")
    assert stored == method.memory_bytes() < CTX.full_bytes
    got = OptEmbed.from_export(CTX, exported)(kjt).to_dict()
    for f in CTX.features:
        if f.pooling == PoolingType.SUM:
            assert torch.equal(got[f.name], expected[f.name]), f.name  # single-valued: bit-exact
        torch.testing.assert_close(got[f.name], expected[f.name], rtol=0, atol=1e-6)
    assert (expected["C4"].abs().sum(1) == 0).any() and (expected["C4"][:, 3:] == 0).all()


def test_unified_base_masks_each_chunk_row_and_keeps_its_layout() -> None:
    method = make(**UNIFIED)
    base = method.base
    assert method.id_scheme == "raw" and method.output_dims() == base.output_dims()
    assert len(method.layout.segments) == sum(1 if n in base.exact else base.chunks[n] for n in CTX.feature_names)
    method.eval()
    kjt = kjt_for(CTX, 64, raw=True)
    assert torch.equal(method(kjt).values(), base(kjt).values())
    with torch.no_grad():
        method.threshold[2, 0] = 1e9  # field C3: every chunk row masked
    out = method(kjt).to_dict()
    assert (out["C3"] == 0).all() and (out["C4"] != 0).any()
    assert method.memory_bytes() == base.memory_bytes()


def test_phases_resume_without_redoing_finished_ones(tmp_path: Path) -> None:
    from recsys.data.synthetic import generate
    from recsys.training.run import train_experiment

    data = tmp_path / "data"
    generate(data, rows=3000, profile="small", seed=1, progress=False)
    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        [
            f"data.path={data}",
            "training.epochs=1",
            "training.batch_size=512",
            "training.progress=false",
            "tracking.enabled=false",
            "embedding.method=optembed",
            "embedding.options={generations: 2, eval_rows: 400, alpha: 0.01, threshold_lr: 0.1}",
        ],
    )
    out = tmp_path / "run"
    first = train_experiment(cfg, out)
    phases = out / "phases"
    assert set(first["phases"]) == {"supernet", "search", "retrain"}
    assert first["embedding_bytes"] == first["phases"]["retrain"]["memory_bytes"] < first["full_embedding_bytes"]
    stamps = {p: (phases / p / "weights.safetensors").stat().st_mtime_ns for p in ("supernet", "search")}
    (phases / "retrain" / "summary.json").unlink()
    second = train_experiment(cfg, out, resume=True)
    assert {p: (phases / p / "weights.safetensors").stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((phases / "retrain" / "summary.json").read_text())["memory_bytes"] == second["embedding_bytes"]
    assert second["phases"]["search"] == first["phases"]["search"]
    assert second["test_auc"] == pytest.approx(first["test_auc"], abs=1e-6)


@pytest.mark.parametrize("base", ["full", "unified"])
def test_fixed_masks_apply_to_the_sharded_tables(process_group: None, base: str) -> None:
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    class Holder(nn.Module):  # a dense parameter besides the frozen thresholds, as in every model
        def __init__(self, method: OptEmbed) -> None:
            super().__init__()
            self.method, self.scale = method, nn.Parameter(torch.ones(()))

        def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
            return self.method(kjt).values() * self.scale

    options = UNIFIED if base == "unified" else {}
    supernet = make(**options)
    prune_some(supernet, 0.5)
    method = entered(supernet, "retrain", **options)
    method.set_dims((16, 5, 8, 3))
    reference = entered(supernet, "retrain", **options)
    reference.set_dims((16, 5, 8, 3))
    apply_optimizer_in_backward(torch.optim.SGD, method.ebc.parameters(), {"lr": 0.01})
    model = DistributedModelParallel(Holder(method), device=torch.device("cpu"))
    model.load_state_dict({f"method.{k}": v for k, v in reference.state_dict().items()} | {"scale": torch.ones(())})
    kjt = kjt_for(CTX, 64, raw=base == "unified", seed=9)
    torch.testing.assert_close(model(kjt), reference(kjt).values(), rtol=0, atol=1e-6)
    assert method.row_masks().keys() == reference.row_masks().keys()
    assert (reference(kjt).to_dict()["C4"].abs().sum(1) == 0).any()


def test_fields_of_different_widths_get_their_own_prefixes() -> None:
    options = {"base": {"method": "unified", "options": {"chunks": "auto", "chunk_dim": 4}}}
    method = make(**options)
    widths = [method.output_dims()[n] for n in CTX.feature_names]
    assert len(set(widths)) > 1 and method.prefix_table is None
    kjt = kjt_for(CTX, 2000, raw=True)
    out = method(kjt).to_dict()
    for n, w in zip(CTX.feature_names, widths):
        kept = (out[n] != 0).sum(1)
        assert kept.max() <= w and kept.float().mean() < 0.75 * w
    method.eval()
    method.set_dims([max(1, w // 2) for w in widths])
    for n, w in zip(CTX.feature_names, widths):
        assert (method(kjt).to_dict()[n][:, max(1, w // 2) :] == 0).all()


def test_search_compression_targets_budgets_beyond_unpruned_tables() -> None:
    with pytest.raises(ValueError, match="search_compression"):
        make(SINGLE.with_budget(compression=40))
    supernet = make(SINGLE, search_compression=40)
    assert supernet.memory_bytes() == SINGLE.full_bytes  # the supernet itself is unbudgeted
    prune_some(supernet, 0.9)
    search = entered(supernet, "search", SINGLE, search_compression=40, generations=3)
    summary = search.search(lambda: float(search.dims.sum()))
    assert summary["memory_bytes"] == search.memory_bytes() <= SINGLE.full_bytes / 40
