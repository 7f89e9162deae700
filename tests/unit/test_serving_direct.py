"""The direct table reader equals the method's module bit for bit: every stored row of every table,
and whole requests (seen, unseen, missing, integer values); the short-string hash equals the reference."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.export import export_run
from recsys.hashing import hash64_str
from recsys.serving.encode import RequestError, _hash
from recsys.serving.store import Store
from tests.serving_support import ensure_runs, raw_strings

WANTED = [("full", "fp32"), ("full", "int8"), ("full", "int4"), ("hash", "fp32"), ("hash", "fp16"), ("hash", "int8")]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[tuple[str, str], Store]:
    data, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    out = tmp_path_factory.mktemp("direct")
    found = {}
    for method, dtype in WANTED:
        export_run(runs[method], out / f"{method}-{dtype}", dtype=dtype)
        found[(method, dtype)] = Store.open(out / f"{method}-{dtype}")
    found[("data", "")] = data  # type: ignore[assignment]
    return found


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("key", WANTED, ids=["-".join(k) for k in WANTED])
def test_every_stored_row_decodes_like_the_tables(stores, key):
    store = stores[key]
    direct = store.direct
    assert direct is not None
    for j, name in enumerate(store.features):
        rows = direct.tables[j].shape[0]
        lengths = torch.zeros(len(store.features), rows, dtype=torch.int32)
        lengths[j] = 1
        kjt = KeyedJaggedTensor(keys=store.features, values=torch.arange(rows), lengths=lengths.ravel(), stride=rows)
        with torch.inference_mode():
            expected = store.embedding.ebc(kjt).to_dict()[name].numpy()
        got = direct.vectors(np.full(rows, j), np.arange(rows), np.ones(rows, bool))
        assert np.array_equal(_bits(got), _bits(expected)), name


@pytest.mark.parametrize("key", WANTED, ids=["-".join(k) for k in WANTED])
def test_requests_equal_the_module(stores, key):
    store = stores[key]
    strings = raw_strings(stores[("data", "")])
    rng = random.Random(3)
    pairs: list[tuple[str, object]] = []
    for name in store.features:
        pairs += [(name, v) for v in rng.sample(sorted(strings[name].values()), min(5, len(strings[name])))]
        pairs += [(name, None), (name, ""), (name, f"unseen-{name}"), (name, 12345)]
    rng.shuffle(pairs)
    for chunk in (pairs[:1], pairs[:2], pairs[:64], [p for p in pairs if p[0] == store.features[0]], pairs):
        assert np.array_equal(_bits(store.embeddings(chunk)), _bits(store.module_embeddings(chunk)))
    with pytest.raises(RequestError, match="unknown sparse feature"):
        store.embeddings([(store.features[0], "x"), ("nope", "x")])
    with pytest.raises(RequestError, match="values must be strings"):
        store.embeddings([(store.features[0], 1.5)])


def test_one_gather_equals_a_gather_per_feature(stores):
    """The quantized tables share one buffer and are read in one gather; the same requests read
    table by table give the same bits."""
    strings = raw_strings(stores[("data", "")])
    for key in WANTED:
        store = stores[key]
        direct = store.direct
        if key[1] != "fp32":
            assert direct.window is not None, key
        if direct.window is None:
            continue
        pairs = [(name, v) for name in store.features for v in [*sorted(strings[name].values())[:3], None, "unseen"]]
        random.Random(2).shuffle(pairs)
        one = store.embeddings(pairs)
        window, direct.window = direct.window, None
        try:
            assert np.array_equal(_bits(store.embeddings(pairs)), _bits(one)), key
        finally:
            direct.window = window


def test_short_string_hash_equals_the_reference():
    rng = random.Random(1)
    alphabet = "abcXYZ019_\x00é€😀 "
    for _ in range(500):
        texts = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 3, 8, 20, 48, 49, 60]))) for _ in range(rng.randint(0, 80))]
        assert _hash(texts).tolist() == [hash64_str(t) for t in texts]


def test_other_modules_run_the_method(stores, monkeypatch):
    store = stores[("hash", "int8")]
    assert type(store.direct).build(torch.nn.Identity(), store.encoder) is None
    monkeypatch.setattr(store, "direct", None)
    pairs = [(store.features[0], "a"), (store.features[1], None)]
    assert store.embeddings(pairs).shape == (2, store.width)
