"""Method-specific checks of the baselines ``full``, ``hash`` and ``qr``."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings import FeatureInfo, MethodContext, build_method
from recsys.embeddings.hashtrick import proportional_rows
from recsys.embeddings.qr import qr_divisors
from recsys.hashing import bucket, salt_for

DIM = 8
CTX = MethodContext(
    (
        FeatureInfo("C1", 3),
        FeatureInfo("C2", 50, multi_valued=True, pooling=PoolingType.MEAN),
        FeatureInfo("C3", 1000),
        FeatureInfo("C4", 20000),
    ),
    DIM,
)
CRITEO_CARDS = [10_000_000, 1_000_000, 300_000, 50_000, 10_000, 1_000, 100, 10, 3]
CRITEO_LIKE = MethodContext(tuple(FeatureInfo(f"C{i}", c) for i, c in enumerate(CRITEO_CARDS)), 16)


def kjt_for(ctx: MethodContext, batch: int, seed: int = 0, raw: bool = False) -> KeyedJaggedTensor:
    gen = torch.Generator().manual_seed(seed)
    lengths = [torch.randint(0, 4, (batch,), generator=gen) if f.multi_valued else torch.ones(batch, dtype=torch.int64) for f in ctx.features]
    low_high = [(-(2**62), 2**62) if raw else (0, f.cardinality) for f in ctx.features]
    values = [torch.randint(lo, hi, (int(n.sum()),), generator=gen) for (lo, hi), n in zip(low_high, lengths)]
    return KeyedJaggedTensor(keys=ctx.feature_names, values=torch.cat(values), lengths=torch.cat(lengths))


def pool(table: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor, mean: bool) -> torch.Tensor:
    """Reference bag pooling with plain indexing."""
    out = []
    for seg in rows.split(lengths.tolist()):
        bag = table[seg].sum(0) if len(seg) else torch.zeros(table.shape[1])
        out.append(bag / len(seg) if mean and len(seg) else bag)
    return torch.stack(out)


def weight(method: torch.nn.Module, table: str) -> torch.Tensor:
    return method.ebc.embedding_bags[table].weight.detach()


def test_full_equals_manual_lookup() -> None:
    method = build_method("full", CTX)
    kjt = kjt_for(CTX, 16)
    out = method(kjt).to_dict()
    for f in CTX.features:
        jt = kjt[f.name]
        expected = pool(weight(method, f.name), jt.values(), jt.lengths(), f.pooling == PoolingType.MEAN)
        torch.testing.assert_close(out[f.name], expected)
    assert method.memory_bytes() == CTX.full_bytes


def test_full_refuses_a_budget_it_cannot_fit() -> None:
    ctx = CTX.with_budget(compression=10)
    with pytest.raises(ValueError, match=rf"needs {CTX.full_bytes} bytes .* budget of {ctx.budget_bytes} bytes"):
        build_method("full", ctx)
    assert build_method("full", CTX.with_budget(budget_bytes=CTX.full_bytes)).memory_bytes() == CTX.full_bytes


@pytest.mark.parametrize("name", ["full", "hash", "qr"])
def test_key_order_of_the_input_does_not_matter(name: str) -> None:
    method = build_method(name, CTX)
    kjt = kjt_for(CTX, 8, raw=name == "hash")
    reordered = kjt.permute([3, 1, 0, 2])
    a, b = method(kjt), method(reordered)
    assert b.keys() == CTX.feature_names
    torch.testing.assert_close(a.values(), b.values())


def test_hash_placement_is_bucket_of_salted_id() -> None:
    method = build_method("hash", CTX.with_budget(compression=10))
    kjt = kjt_for(CTX, 32, raw=True)
    hashed = method.hashed(kjt)
    for name in CTX.feature_names:
        expected = bucket(kjt[name].values(), salt_for(name), method.rows[name])
        assert torch.equal(hashed[name].values(), expected)
        assert torch.equal(hashed[name].lengths(), kjt[name].lengths())


def test_hash_at_full_rows_is_a_lookup_of_bucket_ids() -> None:
    ctx = MethodContext((FeatureInfo("site", 500),), DIM)
    method = build_method("hash", ctx)
    assert method.rows == {"site": 500}
    ids = torch.tensor([-5, 0, 2**62, 17, 17])
    out = method(KeyedJaggedTensor(keys=["site"], values=ids, lengths=torch.ones(5, dtype=torch.int64)))
    torch.testing.assert_close(out.values(), weight(method, "site")[bucket(ids, salt_for("site"), 500)])
    assert torch.equal(out.values()[3], out.values()[4])


def test_hash_explicit_rows() -> None:
    assert build_method("hash", CTX, {"rows": 7}).rows == {n: 7 for n in CTX.feature_names}
    sizes = {"C1": 2, "C2": 3, "C3": 4, "C4": 5}
    method = build_method("hash", CTX, {"rows": sizes})
    assert method.rows == sizes
    assert method.memory_bytes() == sum(sizes.values()) * DIM * 4
    with pytest.raises(ValueError, match="missing"):
        build_method("hash", CTX, {"rows": {"C1": 2}})
    with pytest.raises(ValueError, match="over the budget"):
        build_method("hash", CTX.with_budget(compression=100), {"rows": 1000})


def test_proportional_rows_never_exceed_and_fill_the_budget() -> None:
    rng = random.Random(0)
    for _ in range(300):
        cards = [rng.choice([1, 2, 3, 10, 97, 1000, 123_457, 10**7]) for _ in range(rng.randint(1, 12))]
        total = rng.randint(len(cards), sum(cards) + 10)
        rows = proportional_rows(cards, total)
        assert sum(rows) == min(total, sum(cards))
        assert all(1 <= r <= c for r, c in zip(rows, cards))
        uncapped = [(r, c) for r, c in zip(rows, cards) if 1 < r < c]
        for (r1, c1), (r2, c2) in zip(uncapped, uncapped[1:]):
            assert abs(r1 / c1 - r2 / c2) <= 1 / c1 + 1 / c2 + 1e-12, "rows follow cardinality"
    with pytest.raises(ValueError, match="one row"):
        proportional_rows([5, 5], 1)


@pytest.mark.parametrize("name", ["hash", "qr"])
@pytest.mark.parametrize("compression", [10, 100])
def test_budget_derivation_lands_just_under(name: str, compression: int) -> None:
    ctx = CRITEO_LIKE.with_budget(compression=compression)
    assert ctx.budget_bytes is not None
    method = build_method(name, ctx)
    used = method.memory_bytes() / ctx.budget_bytes
    assert 0.99 <= used <= 1.0, f"{name} at {compression}x uses {used:.4%} of the budget"


def test_qr_budget_rule_never_exceeds() -> None:
    rng = random.Random(1)
    for _ in range(60):
        cards = [rng.choice([2, 3, 10, 97, 1000, 123_457, 10**6]) for _ in range(rng.randint(1, 8))]
        dim = rng.choice([2, 5, 16])
        combiner = rng.choice(["mult", "sum", "concat"])
        full = sum(cards) * dim * 4
        budget = rng.randint(full // 200 + 1, full)
        try:
            divisors = qr_divisors(cards, dim, combiner, budget)
        except ValueError as exc:
            assert f"budget of {budget} bytes" in str(exc)
            continue
        q, r = (dim - dim // 2, dim // 2) if combiner == "concat" else (dim, dim)
        rows = [c * dim if m < 2 else min(c * dim, math.ceil(c / m) * q + m * r) for c, m in zip(cards, divisors)]
        used = sum(rows) * 4
        assert used <= budget


def test_qr_too_small_a_budget_is_a_clear_error() -> None:
    ctx = CTX.with_budget(compression=100)
    with pytest.raises(ValueError, match=rf"cannot fit the budget of {ctx.budget_bytes} bytes: .* need \d+ bytes"):
        build_method("qr", ctx)


def test_qr_tables_and_small_features_stay_full() -> None:
    method = build_method("qr", CTX, {"collisions": 4})
    assert method.divisors == {"C1": 0, "C2": 4, "C3": 4, "C4": 4}
    rows = {c.name: c.num_embeddings for c in method.ebc.embedding_bag_configs()}
    assert rows == {"C1": 3, "C2@q": 13, "C2@r": 4, "C3@q": 250, "C3@r": 4, "C4@q": 5000, "C4@r": 4}
    assert method.memory_bytes() == sum(rows.values()) * DIM * 4
    assert build_method("qr", CTX).divisors == method.divisors


@pytest.mark.parametrize("combiner", ["mult", "sum", "concat"])
def test_qr_combines_quotient_and_remainder_rows(combiner: str) -> None:
    method = build_method("qr", CTX, {"collisions": 7, "combiner": combiner})
    kjt = kjt_for(CTX, 16)
    out = method(kjt).to_dict()
    for f in CTX.features:
        jt = kjt[f.name]
        mean = f.pooling == PoolingType.MEAN
        m = method.divisors[f.name]
        if not m:
            torch.testing.assert_close(out[f.name], pool(weight(method, f.name), jt.values(), jt.lengths(), mean))
            continue
        q = pool(weight(method, f"{f.name}@q"), jt.values() // m, jt.lengths(), mean)
        r = pool(weight(method, f"{f.name}@r"), jt.values() % m, jt.lengths(), mean)
        expected = {"mult": q * r, "sum": q + r, "concat": torch.cat([q, r], dim=1)}[combiner]
        torch.testing.assert_close(out[f.name], expected)


def test_qr_mult_single_id_is_product_of_its_two_rows() -> None:
    ctx = MethodContext((FeatureInfo("C", 100),), DIM)
    method = build_method("qr", ctx, {"collisions": 10})
    ids = torch.tensor([0, 1, 37, 99])
    out = method(KeyedJaggedTensor(keys=["C"], values=ids, lengths=torch.ones(4, dtype=torch.int64))).values()
    torch.testing.assert_close(out, weight(method, "C@q")[ids // 10] * weight(method, "C@r")[ids % 10])


def test_qr_distinct_ids_get_distinct_embeddings() -> None:
    ctx = MethodContext((FeatureInfo("C", 1000),), DIM)
    method = build_method("qr", ctx, {"collisions": 30})
    ids = torch.arange(1000)
    out = method(KeyedJaggedTensor(keys=["C"], values=ids, lengths=torch.ones(1000, dtype=torch.int64))).values()
    assert torch.unique(out, dim=0).shape[0] == 1000


def test_weighted_single_valued_features() -> None:
    ctx = MethodContext((FeatureInfo("C", 100, weighted=True), FeatureInfo("D", 40)), DIM)
    ids = torch.tensor([3, 15, 42, 7, 39, 0])
    w = torch.tensor([0.5, 2.0, -1.0, 1.0, 1.0, 1.0])
    kjt = KeyedJaggedTensor(keys=["C", "D"], values=ids, lengths=torch.ones(6, dtype=torch.int64), weights=w)
    full = build_method("full", ctx)
    torch.testing.assert_close(full(kjt)["C"], weight(full, "C")[ids[:3]] * w[:3, None])
    qr = build_method("qr", ctx, {"collisions": 10})
    expected = weight(qr, "C@q")[ids[:3] // 10] * weight(qr, "C@r")[ids[:3] % 10] * w[:3, None]
    torch.testing.assert_close(qr(kjt)["C"], expected)
    concat = build_method("qr", ctx, {"collisions": 10, "combiner": "concat"})
    q, r = weight(concat, "C@q")[ids[:3] // 10], weight(concat, "C@r")[ids[:3] % 10]
    torch.testing.assert_close(concat(kjt)["C"], torch.cat([q, r], dim=1) * w[:3, None])


def test_qr_concat_odd_dim() -> None:
    ctx = MethodContext((FeatureInfo("C", 100),), 5)
    method = build_method("qr", ctx, {"collisions": 10, "combiner": "concat"})
    dims = {c.name: c.embedding_dim for c in method.ebc.embedding_bag_configs()}
    assert dims == {"C@q": 3, "C@r": 2}
    out = method(KeyedJaggedTensor(keys=["C"], values=torch.tensor([5]), lengths=torch.ones(1, dtype=torch.int64)))
    assert out.values().shape == (1, 5)
    assert method.memory_bytes() == (10 * 3 + 10 * 2) * 4
