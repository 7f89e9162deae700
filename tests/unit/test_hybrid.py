"""``hybrid``: hot rows for the most frequent values, a shared hashed tail, sizes from the counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.synthetic import generate
from recsys.data.vocab import read_value_counts
from recsys.embeddings import FeatureInfo, MethodContext, build_method, get_method
from recsys.embeddings.base import ExportedMethod
from recsys.embeddings.hybrid import HybridOptions, choose_hot, hot_scale, train_rows
from recsys.hashing import bucket, salt_for

DIM = 8
CTX = MethodContext(
    features=(FeatureInfo("A", 12), FeatureInfo("B", 302, multi_valued=True, pooling=PoolingType.MEAN), FeatureInfo("C", 1002)),
    embedding_dim=DIM,
)


def steep(n: int, top: float) -> np.ndarray:
    return np.maximum(1, (top / np.arange(1, n + 1) ** 1.5)).astype(np.int64)


COUNTS = {"A": steep(10, 50), "B": steep(300, 5000), "C": steep(1000, 100)}


def kjt(seed: int = 0) -> KeyedJaggedTensor:
    gen = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for f in CTX.features:
        lens = torch.randint(0, 4, (16,), generator=gen) if f.multi_valued else torch.ones(16, dtype=torch.int64)
        lengths.append(lens)
        values.append(torch.randint(0, f.cardinality, (int(lens.sum()),), generator=gen))
    return KeyedJaggedTensor(keys=CTX.feature_names, values=torch.cat(values), lengths=torch.cat(lengths).int())


@pytest.mark.parametrize(("probes", "scale"), [(1, 1.0), (2, 1.0), (4, 1.0), (2, 0.5), (1, 0.3)])
def test_output_is_one_row_per_value_pooled(probes: int, scale: float) -> None:
    """Each index reads its exclusive row (times ``hot_scale``) when hot, else its probes' tail chunks concatenated;
    bags sum (B: mean)."""
    torch.manual_seed(0)
    options = {"tail_probes": probes, "hot_scale": scale}
    method = build_method("hybrid", CTX.with_budget(compression=4).with_value_counts(COUNTS), options)
    assert 0 < method.tail_rows and all(h < f.cardinality for h, f in zip(method.hot_rows.values(), CTX.features))
    assert method.ebc.embedding_bags["tail"].weight.shape == (method.tail_rows, DIM // probes)
    features = kjt()
    out = method(features).to_dict()
    weights = {t: p.weight.detach() for t, p in method.ebc.embedding_bags.items()}

    def tail_vector(name: str, i: int) -> torch.Tensor:
        salts = [salt_for(name)] + [salt_for(f"{name}@tail#{j}") for j in range(1, probes)]
        return torch.cat([weights["tail"][int(bucket(torch.tensor([i]), salt, method.tail_rows)[0])] for salt in salts])

    for name, jt in features.to_dict().items():
        expected = []
        for bag in jt.to_dense():
            rows = [scale * weights[f"{name}@hot"][i] if i < method.hot_rows[name] else tail_vector(name, i) for i in bag.tolist()]
            vec = torch.stack(rows).sum(0) if rows else torch.zeros(DIM)
            expected.append(vec / max(len(rows), 1) if name == "B" else vec)
        torch.testing.assert_close(out[name], torch.stack(expected), rtol=1e-6, atol=1e-6)


def test_tail_probes_keep_the_bytes_and_default_to_two() -> None:
    """The tail's bytes do not depend on its probes; explicit sizes (older exports) mean one probe."""
    ctx = CTX.with_budget(compression=4).with_value_counts(COUNTS)
    by_probes = {p: build_method("hybrid", ctx, {"tail_probes": p}) for p in (1, 2, 4)}
    assert build_method("hybrid", ctx).tail_probes == 2
    for p, method in by_probes.items():
        assert method.hot_rows == by_probes[1].hot_rows and method.tail_rows == by_probes[1].tail_rows * p
        assert method.memory_bytes() == by_probes[1].memory_bytes() <= ctx.budget_bytes
    explicit = {"hot_rows": by_probes[1].hot_rows, "tail_rows": by_probes[1].tail_rows}
    assert build_method("hybrid", CTX, explicit).tail_probes == 1
    assert build_method("hybrid", CTX, explicit).hot_scale == 1.0, "exports made before hot_scale served unscaled hot rows"


def test_hot_scale_rule() -> None:
    """Unset, ``hot_scale`` is 0.5 when the lightest hot value is seen in fewer than 1/1000 of the train rows, else 1."""
    options = HybridOptions()
    assert hot_scale(options, lightest=79, rows=80_000) == 0.5 and hot_scale(options, lightest=80, rows=80_000) == 1.0
    assert hot_scale(options, lightest=None, rows=80_000) == 1.0 and hot_scale(options, lightest=1, rows=None) == 1.0
    assert hot_scale(HybridOptions(hot_scale=0.8), lightest=1, rows=80_000) == 0.8


def test_hot_scale_follows_the_counts_and_is_exported() -> None:
    """With one feature seen 1000 times more (95,000 train rows), the other features' hot values become rare: the hot
    rows get 0.5 (their weights drawn as ``full``'s); the export records the factor."""
    ctx = CTX.with_budget(compression=4)
    assert build_method("hybrid", ctx.with_value_counts(COUNTS)).hot_scale == 1.0
    assert build_method("hybrid", ctx).hot_scale == 1.0, "no counts: the Zipf prior says nothing of rarity"
    many = ctx.with_value_counts(COUNTS | {"A": COUNTS["A"] * 1000})
    assert train_rows(many) == int(COUNTS["A"].sum()) * 1000
    torch.manual_seed(0)
    method = build_method("hybrid", many)
    assert method.hot_scale == 0.5 and build_method("hybrid", many, {"hot_scale": 0.8}).hot_scale == 0.8
    weight = method.ebc.embedding_bags["C@hot"].weight.detach()
    assert 0.9 < float(weight.abs().max()) * 1002**0.5 <= 1
    exported = method.export()
    assert exported.options["hot_scale"] == 0.5
    served = get_method("hybrid").from_export(ctx, exported)
    features = kjt(2)
    torch.testing.assert_close(served(features).values(), method(features).values(), rtol=0, atol=0)


def test_hot_values_are_the_globally_most_frequent() -> None:
    counts = [np.array([100, 50, 1, 1]), np.array([80, 70, 60, 2, 1])]
    hot, tail = choose_hot(counts, rows=7, hot_share=4 / 7)
    assert hot == [1, 3] and tail == 3  # 100, 80, 70, 60 get rows; 50 does not
    assert choose_hot(counts, rows=9, hot_share=None) == ([4, 5], 0)  # everything fits: no tail
    hot, tail = choose_hot(counts, rows=5, hot_share=None)
    assert sum(hot) + tail == 5 and tail >= 1


def test_counts_steer_the_split_and_the_budget_holds() -> None:
    ctx = CTX.with_value_counts(COUNTS)
    for compression in (1.5, 3, 10, 40):
        method = build_method("hybrid", ctx.with_budget(compression=compression))
        assert method.memory_bytes() <= ctx.with_budget(compression=compression).budget_bytes
        assert method.memory_bytes() == (sum(method.hot_rows.values()) * DIM + method.tail_rows * DIM // method.tail_probes) * 4
    method = build_method("hybrid", ctx.with_budget(compression=3))
    prior = build_method("hybrid", CTX.with_budget(compression=3))
    assert method.hot_rows["B"] > method.hot_rows["C"], "B's values are far more frequent than C's"
    assert method.hot_rows != prior.hot_rows, "the counts, not the prior, choose the hot values"
    share = build_method("hybrid", ctx.with_budget(compression=3), {"hot_share": 0.25})
    total = sum(share.hot_rows.values()) + share.tail_rows // share.tail_probes
    assert sum(share.hot_rows.values()) - 6 == int(0.25 * (total - 6))


def test_hot_scale_is_checked() -> None:
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="hot_scale"):
            build_method("hybrid", CTX.with_budget(compression=4), {"hot_scale": bad})


def test_impossible_budget_names_method_and_bytes() -> None:
    with pytest.raises(ValueError, match=r"method 'hybrid' cannot fit the budget of 100 bytes: .* need 224 bytes"):
        build_method("hybrid", CTX.with_budget(budget_bytes=100))


def test_explicit_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="both 'hot_rows' and 'tail_rows'"):
        build_method("hybrid", CTX, {"tail_rows": 4})
    with pytest.raises(ValueError, match=r"missing \['C'\]"):
        build_method("hybrid", CTX, {"hot_rows": {"A": 2, "B": 2}, "tail_rows": 4})
    with pytest.raises(ValueError, match=r"hot_rows of \['A'\]"):
        build_method("hybrid", CTX, {"hot_rows": {"A": 13, "B": 2, "C": 2}, "tail_rows": 4})


def test_export_serves_without_the_counts() -> None:
    torch.manual_seed(1)
    method = build_method("hybrid", CTX.with_budget(compression=4).with_value_counts(COUNTS)).eval()
    exported = method.export()
    assert exported.options["hot_rows"] == method.hot_rows and exported.options["tail_rows"] == method.tail_rows
    assert exported.options["tail_probes"] == method.tail_probes == 2
    assert exported.options["hot_scale"] == method.hot_scale == 1.0, "COUNTS' lightest hot value is not rare"
    served = get_method("hybrid").from_export(CTX.with_budget(compression=4), ExportedMethod("hybrid", exported.options, exported.state))
    features = kjt(3)
    torch.testing.assert_close(served(features).values(), method(features).values(), rtol=0, atol=0)


def test_dsl_over_hybrid_serves_without_the_counts() -> None:
    """``dsl``'s export records its hybrid base's chosen sizes: serving (no counts) rebuilds the same tables."""
    torch.manual_seed(2)
    ctx = CTX.with_budget(compression=2)
    wrapper = "dsl"
    method = build_method(wrapper, ctx.with_value_counts(COUNTS), {"base": "hybrid", "base_compression": 2, "density": 0.3}).eval()
    exported = method.export()
    base = exported.options["base"]
    assert base["method"] == "hybrid" and base["options"]["hot_rows"] and base["options"]["hot_share"] is None
    without_counts = build_method("hybrid", CTX.with_budget(compression=2))
    assert without_counts.hot_rows != base["options"]["hot_rows"], "the counts must change the sizes, or this test shows nothing"
    served = get_method(wrapper).from_export(ctx, ExportedMethod(wrapper, exported.options, exported.state))
    features = kjt(4)
    with torch.no_grad():
        torch.testing.assert_close(served(features).values(), method(features).values(), rtol=0, atol=0)


def test_read_value_counts_from_a_dataset(tmp_path) -> None:
    spec = generate(tmp_path / "d", rows=3000, profile="small_real", seed=0, progress=False)
    counts = read_value_counts(spec, tmp_path / "d")
    assert list(counts) == [f.name for f in spec.sparse_fields]
    for f in spec.sparse_fields:
        assert len(counts[f.name]) == f.cardinality - 2 and (np.diff(counts[f.name]) <= 0).all()
    single = [f.name for f in spec.sparse_fields if not f.multi_valued]
    assert sum(int(counts[n].sum()) for n in single) == spec.splits["train"].rows * len(single)
