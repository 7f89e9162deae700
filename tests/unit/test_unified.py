"""``unified`` (feature multiplexing): widths, parameters, salts, budgets, statistics, exact tables."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings import FeatureInfo, MethodContext, build_method
from recsys.embeddings.unified import UnifiedEmbedding, auto_chunks, exact_rows, probe_salt
from recsys.hashing import bucket_np, hash64_strings, salt_for
from recsys.models import DLRM

ROOT = Path(__file__).resolve().parents[2]
D = 16
CTX = MethodContext(
    features=(
        FeatureInfo("C1", 4),
        FeatureInfo("C2", 50, multi_valued=True, pooling=PoolingType.MEAN),
        FeatureInfo("C3", 1000),
        FeatureInfo("C4", 20000),
    ),
    embedding_dim=D,
)
# Criteo-like: 26 features, cardinalities from 4 to 10^6.
CRITEO = MethodContext(
    tuple(FeatureInfo(f"C{i + 1}", int(c)) for i, c in enumerate(np.unique(np.geomspace(4, 10**6, 26).astype(int)))),
    embedding_dim=D,
)


def unified(ctx: MethodContext = CTX, seed: int = 0, **options: object) -> UnifiedEmbedding:
    torch.manual_seed(seed)
    method = build_method("unified", ctx, options)
    assert isinstance(method, UnifiedEmbedding)
    return method


def raw_kjt(ctx: MethodContext, batch: int, seed: int = 0, weighted: bool = False) -> KeyedJaggedTensor:
    """Random raw ids (multi-valued features: 0-3 per bag), optionally with weights."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [torch.randint(0, 4, (batch,), generator=gen) if f.multi_valued else torch.ones(batch, dtype=torch.int64) for f in ctx.features]
    n = int(sum(int(x.sum()) for x in lengths))
    values = torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, generator=gen)
    weights = torch.rand(n, generator=gen) if weighted else None
    return KeyedJaggedTensor(keys=ctx.feature_names, values=values, lengths=torch.cat(lengths), weights=weights)


def random_ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)


def test_output_width_is_chunks_times_chunk_dim() -> None:
    method = unified(chunk_dim=4, chunks={"C1": 1, "C2": 2, "C3": 3, "C4": 5})
    assert method.output_dims() == {"C1": 4, "C2": 8, "C3": 12, "C4": 20}
    out = method(raw_kjt(CTX, 8))
    assert out.length_per_key() == [4, 8, 12, 20] and out.values().shape == (8, 44)


def test_default_width_is_embedding_dim_so_dlrm_needs_no_projection() -> None:
    method = unified()
    assert method.chunk_dim == D // 2 and set(method.chunks.values()) == {2}
    assert method.output_dims() == dict.fromkeys(CTX.feature_names, D)
    assert DLRM(method, num_dense=3, embedding_dim=D, dense_arch=[8], over_arch=[8]).sparse_arch.projection is None
    projected = DLRM(unified(chunks="auto", chunk_dim=4), 3, D, [8], [8])
    assert projected.sparse_arch.projection is not None


def test_auto_chunks_fill_the_total_width_by_log_cardinality() -> None:
    method = unified(CRITEO.with_budget(compression=100), chunks="auto", chunk_dim=4)
    assert sum(method.output_dims().values()) == len(CRITEO.features) * D
    assert min(method.chunks.values()) >= 1
    by_card = [method.chunks[f.name] for f in sorted(CRITEO.features, key=lambda f: f.cardinality)]
    assert by_card == sorted(by_card) and by_card[-1] > by_card[0]
    assert auto_chunks({"a": 2, "b": 2**10, "c": 2**20}, 9) == {"a": 1, "b": 3, "c": 5}
    with pytest.raises(ValueError, match="at least one chunk per feature"):
        auto_chunks({"a": 2, "b": 3}, 1)


@pytest.mark.parametrize("k", [1, 3])
def test_parameters_are_k_b_chunk_dim_whatever_the_features(k: int) -> None:
    small = MethodContext(CTX.features[:2], D)
    for ctx in (small, CTX, CRITEO):
        method = unified(ctx, rows=101, num_tables=k, chunk_dim=4, chunks=3)
        assert sum(p.numel() for p in method.parameters()) == k * 101 * 4
        assert method.memory_bytes() == k * 101 * 4 * 4


def test_round_robin_sub_tables_over_sorted_pairs() -> None:
    method = unified(num_tables=3, chunks=2)
    pairs = sorted((n, j) for n in CTX.feature_names for j in range(2))
    assert method.table_of == {p: i % 3 for i, p in enumerate(pairs)}
    tables = {c.name: c.feature_names for c in method.ebc.embedding_bag_configs()}
    assert tables == {"unified_0": ["C1#0", "C2#1", "C4#0"], "unified_1": ["C1#1", "C3#0", "C4#1"], "unified_2": ["C2#0", "C3#1"]}


@pytest.mark.parametrize("multi", [False, True], ids=["sum", "mean"])
def test_one_probe_at_full_width_is_the_hash_baseline(multi: bool) -> None:
    pooling = PoolingType.MEAN if multi else PoolingType.SUM
    ctx = MethodContext((FeatureInfo("C3", 1000, multi_valued=multi, pooling=pooling),), D)
    hashed = build_method("hash", ctx, {"rows": 137})
    method = unified(ctx, seed=1, rows=137, chunk_dim=D, chunks=1)
    method.ebc.embedding_bags["unified_0"].weight.data.copy_(hashed.ebc.embedding_bags["C3"].weight.data)
    kjt = raw_kjt(ctx, 64, seed=2)
    assert torch.equal(method.multiplexed(kjt).values(), hashed.hashed(kjt).values())
    torch.testing.assert_close(method(kjt).values(), hashed(kjt).values(), rtol=1e-6, atol=1e-7)
    assert probe_salt("C3", 0) == salt_for("C3") and probe_salt("C3", 1) == salt_for("C3#1")


def test_golden_bucket_assignments() -> None:
    method = unified(MethodContext((FeatureInfo("C1", 10**6),), D), rows=1000, chunks=3)
    ids = torch.tensor([0, 1, 42, -1, 2**62 + 7])
    kjt = KeyedJaggedTensor(keys=["C1"], values=ids, lengths=torch.ones(5, dtype=torch.int64))
    rows = method.multiplexed(kjt)
    assert rows.keys() == ["C1#0", "C1#1", "C1#2"]
    assert rows["C1#0"].values().tolist() == [667, 706, 316, 297, 749]
    assert rows["C1#1"].values().tolist() == [709, 726, 990, 473, 518]
    assert rows["C1#2"].values().tolist() == [375, 875, 344, 221, 321]
    assert rows["C1#1"].values().tolist() == bucket_np(ids.numpy(), salt_for("C1#1"), 1000).tolist()


def test_reordering_features_changes_no_row_nor_output() -> None:
    ctx, rev = CTX, MethodContext(tuple(reversed(CTX.features)), D)
    a, b = unified(ctx, num_tables=2, exact_below=4), unified(rev, seed=5, num_tables=2, exact_below=4)
    assert a.table_of == b.table_of and a.rows == b.rows and a.exact == b.exact
    kjt = raw_kjt(ctx, 16)
    rows_a, rows_b = a.multiplexed(kjt).to_dict(), b.multiplexed(kjt).to_dict()
    assert rows_a.keys() == rows_b.keys()
    assert all(torch.equal(rows_a[k].values(), rows_b[k].values()) for k in rows_a)
    b.load_state_dict(a.state_dict())
    out_a, out_b = a(kjt).to_dict(), b(kjt).to_dict()
    assert list(b(kjt).keys()) == rev.feature_names
    assert all(torch.equal(out_a[n], out_b[n]) for n in ctx.feature_names)


def test_mean_and_weighted_features_share_a_table() -> None:
    features = (FeatureInfo("a", 100, weighted=True), FeatureInfo("b", 100, multi_valued=True, pooling=PoolingType.MEAN))
    ctx = MethodContext(features, D)
    method = unified(ctx, rows=50, chunks=2)
    assert method.is_weighted() and len(method.ebc.embedding_bag_configs()) == 1
    kjt = raw_kjt(ctx, 12, weighted=True)
    out = method(kjt).to_dict()
    table = method.ebc.embedding_bags["unified_0"].weight
    rows = method.multiplexed(kjt).to_dict()
    for name in ("a", "b"):
        bags = [rows[f"{name}#{j}"] for j in range(2)]
        for i in range(12):
            parts = []
            for bag in bags:
                idx, w = bag.values()[bag.offsets()[i] : bag.offsets()[i + 1]], bag.weights()[bag.offsets()[i] : bag.offsets()[i + 1]]
                pooled = (table[idx] * w[:, None]).sum(0)
                parts.append(pooled / max(len(idx), 1) if name == "b" else pooled)
            torch.testing.assert_close(out[name][i], torch.cat(parts), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exact_below", [0, 6])
def test_budgets_are_met_closely(exact_below: int) -> None:
    """B is the largest that fits: within one row of every sub-table under the budget."""
    for compression in (1, 10, 100, 1000):
        ctx = CRITEO.with_budget(compression=compression)
        method = unified(ctx, num_tables=2, exact_below=exact_below)
        assert ctx.budget_bytes is not None
        assert ctx.budget_bytes - 2 * method.chunk_dim * 4 < method.memory_bytes() <= ctx.budget_bytes
        assert method.compression_ratio() >= compression
        assert len(method.exact) == sum(f.cardinality <= exact_below for f in CRITEO.features)


def test_budget_too_small_and_bad_options_raise_clearly() -> None:
    ctx = CRITEO.with_budget(compression=1000)  # exact tables of 4, 6 and 10 values: 422,400 bytes
    with pytest.raises(ValueError, match=f"budget of {ctx.budget_bytes} bytes: exact tables need 422400 bytes"):
        build_method("unified", ctx, {"exact_below": 10})
    with pytest.raises(ValueError, match="invalid options"):
        build_method("unified", CTX, {"chunk": 2})
    with pytest.raises(ValueError, match="missing \\['C4'\\]"):
        build_method("unified", CTX, {"chunks": {"C1": 1, "C2": 1, "C3": 1}})
    with pytest.raises(ValueError, match="sub-tables"):
        build_method("unified", CTX, {"chunks": 1, "num_tables": 5})
    with pytest.raises(ValueError, match="invalid options"):
        build_method("unified", CTX, {"chunks": 0})


def test_no_budget_costs_like_full_on_the_shared_features() -> None:
    method = unified(CTX, num_tables=2)
    assert method.rows == sum(f.cardinality for f in CTX.features) * D // (2 * method.chunk_dim)
    assert method.memory_bytes() <= CTX.full_bytes


def test_occupied_rows_follow_the_balls_in_bins_law() -> None:
    rows = 4096
    method = unified(MethodContext((FeatureInfo("x", 10**7),), D), rows=rows, chunks=2)
    for n in (1000, 4096, 20000):
        stats = method.collision_stats({"x": random_ids(n, n)})["features"]["x"]
        expected = rows * (1 - math.exp(-n / rows))
        assert stats["expected_rows_per_probe"] == pytest.approx(expected)
        for occupied in stats["rows_per_probe"]:
            assert occupied == pytest.approx(expected, rel=0.02)
        assert stats["intra_share"] == pytest.approx(1 - (1 - 1 / rows) ** (n - 1), rel=0.05)


def test_inter_feature_collisions_are_about_one_over_b() -> None:
    rows = 1000
    ctx = MethodContext((FeatureInfo("x", 10**6), FeatureInfo("y", 10**6), FeatureInfo("z", 10**6)), D)
    method = unified(ctx, rows=rows, num_tables=2, chunks=2)
    stats = method.collision_stats({"x": random_ids(3000, 1), "y": random_ids(2000, 2), "z": random_ids(500, 3)})
    assert stats["inter_pair_rate"] == pytest.approx(1 / rows, rel=0.05)
    assert 0 < stats["features"]["z"]["inter_share"] < 1
    assert stats["features"]["x"]["rows_occupied"] <= 2 * rows


def test_collision_stats_of_a_hand_made_case() -> None:
    ctx = MethodContext((FeatureInfo("a", 10**6), FeatureInfo("b", 3)), D)
    method = unified(ctx, rows=7, chunks=1, exact_below=3)
    ids = np.array([5, 5, 11], dtype=np.int64)  # duplicates count once
    stats = method.collision_stats({"a": ids, "b": np.array([1, 2], dtype=np.int64)})
    a_rows = bucket_np(np.array([5, 11]), salt_for("a"), 7)
    assert stats["features"]["a"]["values"] == 2
    assert stats["features"]["a"]["rows_occupied"] == len(set(a_rows.tolist()))
    assert stats["features"]["b"]["inter_share"] == 0.0 and stats["features"]["a"]["inter_share"] == 0.0
    assert stats["inter_pair_rate"] == 0.0 and stats["rows"] == 7


def test_exact_tables_are_collision_free_on_a_vocabulary() -> None:
    assert exact_rows(4, 0.01) == 600 and exact_rows(1, 0.01) == 1
    features = (FeatureInfo("small", 30), FeatureInfo("big", 10**6))
    method = unified(MethodContext(features, D), rows=100, exact_below=30)
    assert method.exact == {"small": exact_rows(30, 0.01)}
    config = {c.name: c for c in method.ebc.embedding_bag_configs()}["exact_small"]
    assert config.num_embeddings == 43500 and config.embedding_dim == D and config.feature_names == ["small"]
    vocab = hash64_strings([f"small_{i}" for i in range(30)])
    stats = method.collision_stats({"small": vocab})["features"]["small"]
    assert stats["rows_occupied"] == 30 and stats["intra_share"] == 0.0


def test_exact_table_sizing_bounds_the_expected_colliding_pairs() -> None:
    pairs, n = 0.5, 20
    rows = exact_rows(n, pairs)
    found = []
    for trial in range(2000):
        _, counts = np.unique(bucket_np(random_ids(n, trial), salt_for("small"), rows), return_counts=True)
        found.append(int((counts * (counts - 1) // 2).sum()))
    assert np.mean(found) == pytest.approx(n * (n - 1) / 2 / rows, rel=0.15)
    assert np.mean(found) <= pairs * 1.15


def test_same_rows_and_outputs_in_another_process() -> None:
    script = (
        "import torch\n"
        "from tests.unit.test_unified import CTX, raw_kjt, unified\n"
        "m = unified(CTX, seed=3, num_tables=2, exact_below=4)\n"
        "kjt = raw_kjt(CTX, 32, seed=4)\n"
        "print(m.multiplexed(kjt).values().tolist())\n"
        "print(repr(float(m(kjt).values().double().sum())))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    method, kjt = unified(CTX, seed=3, num_tables=2, exact_below=4), raw_kjt(CTX, 32, seed=4)
    rows, checksum = result.stdout.strip().splitlines()[-2:]
    assert rows == str(method.multiplexed(kjt).values().tolist())
    assert checksum == repr(float(method(kjt).values().double().sum()))


def test_models_map_each_field_on_its_own_when_rows_are_shared() -> None:
    from recsys.config import ModelConfig
    from recsys.models import build_model, resolve_model_config

    shared, auto = unified(CTX.with_budget(compression=10)), ModelConfig()
    assert shared.shares_rows_across_features() and resolve_model_config(auto, shared).field_projection is True
    assert build_model(auto, shared, num_dense=3).sparse_arch.projection.projected == ["C1", "C2", "C3", "C4"]
    dcn = ModelConfig(name="dcnv2")  # its cross layers weigh each field already
    assert resolve_model_config(dcn, shared).field_projection is False
    assert build_model(dcn.model_copy(update={"field_projection": True}), shared, 3).sparse_arch.projection is not None
    off = ModelConfig(field_projection=False)
    assert build_model(off, shared, num_dense=3).sparse_arch.projection is None
    alone = unified(MethodContext(CTX.features[:1], D), chunks=1, chunk_dim=D)  # one feature: nothing shared
    assert not alone.shares_rows_across_features() and resolve_model_config(auto, alone).field_projection is False
    full = build_method("full", CTX, {})
    assert resolve_model_config(auto, full).field_projection is False
    for wrapper in ("optembed", "dsl"):
        assert build_method(wrapper, CTX, {"base": "unified"}).shares_rows_across_features()
