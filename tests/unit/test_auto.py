"""``embedding.method: auto``: its choice on synthetic statistics, and a built choice doing the work."""

import numpy as np
import pytest
import torch

from recsys.embeddings import FeatureInfo, MethodContext, build_method
from recsys.embeddings.auto import (
    HOT_MASS,
    ROWS_PER_ROW,
    AutoEmbedding,
    choose,
    hot_mass,
)
from tests.unit.test_method_contract import random_kjt

CARDS = {"C1": 40, "C2": 600, "C3": 1500, "C4": 3000}
CTX = MethodContext(tuple(FeatureInfo(n, c) for n, c in CARDS.items()), embedding_dim=16)


def counts(exponent: float, top: float = 1e5) -> dict[str, np.ndarray]:
    """Train counts in index order (values 2..card-1): Zipf(``exponent``) from ``top``; 0 gives flat counts."""
    return {n: np.floor(top / np.arange(1, c - 1, dtype=np.float64) ** exponent) + 1 for n, c in CARDS.items()}


def test_no_budget_or_a_budget_holding_full_is_full() -> None:
    assert choose(CTX).method == "full"
    assert choose(CTX.with_budget(budget_bytes=CTX.full_bytes)).method == "full"


def test_skewed_counts_at_10x_pick_hybrid_and_flat_counts_pick_qr() -> None:
    ctx = CTX.with_budget(compression=10)
    skewed, flat = ctx.with_value_counts(counts(1.2)), ctx.with_value_counts(counts(0.0))
    assert hot_mass(skewed) > HOT_MASS > hot_mass(flat)
    assert choose(skewed).method == "hybrid"
    assert choose(flat).method == "qr" and "only" in choose(flat).reason
    assert choose(ctx).method == "qr" and "no value counts" in choose(ctx).reason
    assert choose(skewed).stats["compression"] == pytest.approx(10, rel=1e-3)
    assert choose(skewed).stats["rows_per_row"] > ROWS_PER_ROW


def test_few_train_rows_per_budget_row_pick_qr() -> None:
    """8k-row real samples: hybrid's shared tail trains too little there (docs/results/robustness.md)."""
    ctx = CTX.with_budget(compression=10).with_value_counts(counts(1.2, top=20.0))
    stats = choose(ctx).stats
    assert stats["train_rows"] == sum(np.floor(20.0 / np.arange(1, 2999) ** 1.2) + 1)  # C4, the largest total
    assert stats["rows_per_row"] == pytest.approx(stats["train_rows"] / (ctx.budget_bytes // 64))
    assert stats["rows_per_row"] < ROWS_PER_ROW and choose(ctx).method == "qr" and "train rows per budget row" in choose(ctx).reason


def test_a_budget_qr_cannot_fit_picks_unified() -> None:
    ctx = CTX.with_budget(compression=100).with_value_counts(counts(1.2))
    with pytest.raises(ValueError, match="qr"):
        build_method("qr", ctx)
    assert choose(ctx).method == "unified" and "qr cannot fit" in choose(ctx).reason


@pytest.mark.parametrize(("compression", "expected"), [(10, "hybrid"), (100, "unified")])
def test_auto_trains_and_exports_as_its_choice(compression: int, expected: str) -> None:
    ctx = CTX.with_budget(compression=compression).with_value_counts(counts(1.2))
    torch.manual_seed(0)
    method = build_method("auto", ctx)
    assert isinstance(method, AutoEmbedding) and method.chosen.name == expected
    assert method.id_scheme == method.chosen.id_scheme and method.memory_bytes() == method.chosen.memory_bytes() <= ctx.budget_bytes
    features = random_kjt(expected, batch=8, ctx=ctx)
    assert torch.equal(method(features).values(), method.chosen(features).values())
    assert method.diagnostics()["auto"]["method"] == expected
    assert method.export().name == expected, "the artifact names the chosen method"
    torch.manual_seed(0)
    alone = build_method(expected, ctx)
    assert all(torch.equal(a, b) for a, b in zip(method.chosen.state_dict().values(), alone.state_dict().values())), (
        "the same initial weights as the chosen method built alone"
    )
