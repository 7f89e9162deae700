"""recsys.serving.wire: bulk JSON of float32 vectors (exact round trip) and the fast ``items`` check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.serving.wire import fast_pairs, float32_json


def _roundtrip(v: np.ndarray) -> np.ndarray:
    return np.array(json.loads(float32_json(v)), np.float32).reshape(v.shape)


def test_float32_json_is_exact_for_every_kind_of_float32():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[np.isfinite(bits)]
    edge = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e-45,
            -1e-45,
            1.17549435e-38,
            3.4028235e38,
            -3.4028235e38,
            9.99999999e-1,
            999999999.0,
            1e10,
            5e-324,
            123456789.0,
            1e-8,
        ],
        np.float32,
    )
    for values in (bits, edge, rng.normal(size=4096).astype(np.float32), (rng.normal(size=4096) * 1e-4).astype(np.float32)):
        v = values[: len(values) // 16 * 16].reshape(-1, 16)
        back = _roundtrip(v)
        assert np.array_equal(back.view(np.uint32), v.view(np.uint32))  # bit for bit, the sign of zero included


def test_float32_json_shapes_and_non_finite_fallback():
    assert json.loads(float32_json(np.zeros((0, 16), np.float32))) == []
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert json.loads(float32_json(v)) == [[0, 1, 2], [3, 4, 5]]
    assert float32_json(np.array([[np.nan, 1.0]], np.float32)) == b"[[NaN, 1.0]]"  # json's own spelling


def test_fast_pairs_accepts_only_well_formed_items():
    ok = {"items": [{"feature": "C1", "value": "a"}, {"feature": "C2", "value": None}, {"value": 3, "feature": "C3"}]}
    assert fast_pairs(ok, 10, 5) == [("C1", "a"), ("C2", None), ("C3", 3)]
    assert fast_pairs({"items": []}, 10, 5) == []


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{"feature": "C1", "value": True}]},
        {"items": [{"feature": "C1", "value": 1.5}]},
        {"items": [{"feature": "", "value": "a"}]},
        {"items": [{"feature": "C1", "value": "aaaaaa"}]},
        {"items": [{"feature": "C1"}]},
        {"items": [{"feature": "C1", "x": 1}]},
        {"items": [{"feature": 1, "value": "a"}]},
        {"items": [["C1", "a"]]},
        {"items": [{"feature": "C1", "value": "a"}] * 11},
        {"items": None},
        {"items": [], "entities": []},
        [],
        {"entities": []},
        {"items": [{"feature": "C1", "value": ["a"]}]},
        {"items": [{"feature": ["C1"], "value": "a"}]},
        {"items": [{"feature": "C1", "value": "a"}, {"feature": True, "value": "a"}]},
        {"items": [{"feature": "C1", "value": "a"}, {"feature": "C123456", "value": "a"}]},
    ],
)
def test_fast_pairs_declines_anything_else(body):
    assert fast_pairs(body, 10, 5) is None
