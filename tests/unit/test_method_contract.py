"""Contract tests run on every registered embedding method.

``SETTINGS`` below may give a method the options used here and the compression its behavioural
tests run at (default: its default options, no budget). Methods that cannot reach a compression
must raise a ``ValueError`` naming the budget. The hooks tests (``test_contract_hooks.py``)
cover the declared hooks and the wrapped compositions of ``COMPOSITIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings import EmbeddingMethod, FeatureInfo, MethodContext, available_methods, build_method, get_method, parse_options

DIM = 16
CTX = MethodContext(
    features=(
        FeatureInfo("C1", 3),
        FeatureInfo("C2", 50, multi_valued=True, pooling=PoolingType.MEAN),
        FeatureInfo("C3", 1000),
        FeatureInfo("C4", 20000),
    ),
    embedding_dim=DIM,
)
METHODS = available_methods()


@dataclass(frozen=True)
class Setting:
    """How the contract tests build a method: its options and the compression they run at."""

    options: dict[str, Any] = field(default_factory=dict)
    compression: float | None = None


SETTINGS: dict[str, Setting] = {
    "auto": Setting(compression=2.0),  # no value counts here: qr
    "dsl": Setting(compression=2.0),
    "hash": Setting(compression=10.0),
    "hybrid": Setting({"hot_share": 0.9}, compression=2.0),
    "qr": Setting(compression=10.0),
    "unified": Setting({"num_tables": 2, "exact_below": 3}, compression=10.0),
}


def setting(name: str) -> Setting:
    return SETTINGS.get(name, Setting())


def contract_ctx(name: str) -> MethodContext:
    compression = setting(name).compression
    return CTX.with_budget(compression=compression) if compression else CTX


def make(name: str, seed: int = 0, ctx: MethodContext | None = None) -> EmbeddingMethod:
    torch.manual_seed(seed)
    return build_method(name, ctx or contract_ctx(name), dict(setting(name).options))


def random_kjt(name: str, batch: int, seed: int = 0, ctx: MethodContext = CTX) -> KeyedJaggedTensor:
    """Valid ids for the method's id scheme: indices below the cardinality, or any int64 (raw)."""
    gen = torch.Generator().manual_seed(seed)
    raw = get_method(name).id_scheme_for(parse_options(name, setting(name).options)) == "raw"
    lengths, values = [], []
    for f in ctx.features:
        lens = torch.randint(0, 4, (batch,), generator=gen) if f.multi_valued else torch.ones(batch, dtype=torch.int64)
        n = int(lens.sum())
        if raw:
            ids = torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, generator=gen)
        else:
            ids = torch.randint(0, f.cardinality, (n,), generator=gen)
        lengths.append(lens)
        values.append(ids)
    lengths_all = torch.cat(lengths).to(torch.int32)
    return KeyedJaggedTensor(keys=ctx.feature_names, values=torch.cat(values), lengths=lengths_all)


def tables(method: EmbeddingMethod) -> list[EmbeddingBagCollection]:
    return [m for m in method.modules() if type(m) is EmbeddingBagCollection]


@pytest.mark.parametrize("name", METHODS)
def test_output_keys_and_widths(name: str) -> None:
    method = make(name)
    out = method(random_kjt(name, 8))
    assert isinstance(out, KeyedTensor)
    dims = method.output_dims()
    assert out.keys() == CTX.feature_names
    assert out.length_per_key() == [dims[n] for n in CTX.feature_names]
    assert out.values().shape == (8, sum(dims.values()))
    assert out.values().dtype == torch.float32
    for n, t in out.to_dict().items():
        assert t.shape == (8, dims[n])


@pytest.mark.parametrize("name", METHODS)
def test_embedding_bag_configs_agree_with_output_dims(name: str) -> None:
    method = make(name)
    configs = method.embedding_bag_configs()
    assert [c.feature_names for c in configs] == [[n] for n in CTX.feature_names]
    assert {c.feature_names[0]: c.embedding_dim for c in configs} == method.output_dims()
    assert method.is_weighted() is False


@pytest.mark.parametrize("name", METHODS)
def test_tables_are_stock_ebcs_counted_in_memory(name: str) -> None:
    method = make(name)
    ebcs = tables(method)
    assert ebcs, "a method holds its tables in stock EmbeddingBagCollection children"
    nonzero = sum(int(p.count_nonzero()) for e in ebcs for p in e.parameters())
    assert nonzero > 0
    assert method.memory_bytes() >= nonzero * 4, "every nonzero table weight is served in fp32"


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_every_table_and_are_finite(name: str) -> None:
    method = make(name)
    out = method(random_kjt(name, 64))
    out.values().sum().backward()
    for p in method.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    for ebc in tables(method):
        for table, p in ebc.named_parameters():
            assert p.grad is not None, f"{table} got no gradient"
            assert p.grad.abs().sum() > 0, f"{table} got an all-zero gradient"


@pytest.mark.parametrize("compression", [1, 10, 100])
@pytest.mark.parametrize("name", METHODS)
def test_memory_within_budget(name: str, compression: int) -> None:
    ctx = CTX.with_budget(compression=compression)
    budget = ctx.budget_bytes
    assert budget is not None
    try:
        method = make(name, ctx=ctx)
    except ValueError as exc:
        assert compression > 1, f"every method must fit compression 1: {exc}"
        message = str(exc)
        assert "budget" in message and str(budget) in message, f"unclear error: {message}"
        return
    assert 0 < method.memory_bytes() <= budget
    assert method.compression_ratio() >= compression * (1 - 1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip(name: str) -> None:
    trained = make(name, seed=0)
    fresh = make(name, seed=1)
    kjt = random_kjt(name, 32)
    assert not torch.equal(trained(kjt).values(), fresh(kjt).values())
    state = trained.state_dict()
    assert state, "a method's tables belong in its state_dict"
    fresh.load_state_dict(state)
    assert torch.equal(trained(kjt).values(), fresh(kjt).values())


@pytest.mark.parametrize("name", METHODS)
def test_deterministic(name: str) -> None:
    a, b = make(name, seed=7), make(name, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    kjt = random_kjt(name, 32, seed=3)
    first = a(kjt).values()
    assert torch.equal(first, a(kjt).values())
    assert torch.equal(first, b(kjt).values())


@pytest.mark.parametrize("name", METHODS)
def test_prepared_features_give_the_same_outputs_and_gradients(name: str) -> None:
    kjt = random_kjt(name, 32, seed=5)
    raw_path, prepared_path = make(name, seed=2), make(name, seed=2)
    prepared = prepared_path.prepare(kjt)
    again = prepared_path.prepare(prepared)
    assert again.keys() == prepared.keys() and torch.equal(again.values(), prepared.values())
    assert torch.equal(again.lengths(), prepared.lengths())
    out, out_prepared = raw_path(kjt), prepared_path(prepared)
    assert out_prepared.keys() == out.keys() and torch.equal(out_prepared.values(), out.values())
    weights = torch.randn_like(out.values())
    (out.values() * weights).sum().backward()
    (out_prepared.values() * weights).sum().backward()
    grads = {k: p.grad for k, p in raw_path.named_parameters() if p.grad is not None}
    assert grads, "the raw path trains some parameter"
    for k, p in prepared_path.named_parameters():
        assert (p.grad is None) == (k not in grads), k
        assert p.grad is None or torch.equal(p.grad, grads[k]), k
    raw_path.eval(), prepared_path.eval()
    assert torch.equal(raw_path(kjt).values(), prepared_path(prepared_path.prepare(kjt)).values())


@pytest.mark.parametrize("name", METHODS)
def test_empty_batch(name: str) -> None:
    method = make(name)
    out = method(random_kjt(name, 0))
    assert out.keys() == CTX.feature_names
    assert out.values().shape == (0, sum(method.output_dims().values()))


@pytest.mark.parametrize("name", METHODS)
def test_zero_length_bags_give_zeros(name: str) -> None:
    method = make(name)
    batch = 4
    kjt = random_kjt(name, batch)
    f = len(CTX.features)
    lengths = kjt.lengths().view(f, batch).clone()
    lengths[:, 1] = 0
    lengths[1, :] = 0
    keep = torch.repeat_interleave(torch.ones(f * batch, dtype=torch.bool), kjt.lengths().long())
    segments = torch.repeat_interleave(torch.arange(f * batch), kjt.lengths().long())
    keep &= (lengths.flatten() > 0)[segments]
    sparse = KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values()[keep], lengths=lengths.flatten())
    out = method(sparse)
    for n, t in out.to_dict().items():
        assert torch.equal(t[1], torch.zeros_like(t[1])), f"{n}: an empty bag must pool to zeros"
    assert torch.equal(out.to_dict()["C2"], torch.zeros(batch, method.output_dims()["C2"]))
    assert out.to_dict()["C4"][0].abs().sum() > 0


def test_unknown_method_lists_available() -> None:
    with pytest.raises(KeyError) as info:
        build_method("x", CTX)
    assert info.value.args[0] == f"unknown method 'x'; available: {', '.join(available_methods())}"
    for name in ("full", "hash", "qr"):
        assert name in METHODS
