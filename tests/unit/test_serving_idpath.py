"""The compiled id path (``recsys.serving.idpath``) equals the numpy path bit for bit: whole ids.v1
bodies and bulk lookups on every export dtype (fp32/fp16/int8/int4, index and hash methods),
strings and raw ids, unseen and missing values, empty blocks, duplicates, crowded vocabularies,
adversarial stored bits (NaN, infinities, subnormals); and it answers only bodies the numpy path
answers 200 (anything else gives ``None``: the Python path explains)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from recsys.export import export_run
from recsys.hashing import hash64_strings
from recsys.serving import compiled
from recsys.serving.encode import RequestError
from recsys.serving.idsv1 import FormatError, decode, encode
from recsys.serving.store import Store
from recsys.serving.vocabulary import MISSING_ID, Vocabularies
from tests.serving_support import ensure_runs, raw_strings

needs_kernel = pytest.mark.skipif(compiled.idpath is None, reason="recsys.serving.idpath not built (make install builds it)")
WANTED = [("full", "fp32"), ("full", "fp16"), ("full", "int8"), ("full", "int4"), ("hash", "fp16"), ("hash", "int4")]
MAX_ITEMS, MAX_LEN = 4096, 64


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    data, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    out = tmp_path_factory.mktemp("idpath")
    found = {}
    for method, dtype in WANTED:
        export_run(runs[method], out / f"{method}-{dtype}", dtype=dtype)
        found[(method, dtype)] = Store.open(out / f"{method}-{dtype}")
    found["strings"] = raw_strings(data)
    return found


def _numpy(store: Store, body: bytes) -> bytes | None:
    """The numpy path's answer bytes (``None`` where it answers 400 or 422)."""
    try:
        blocks = decode(body, MAX_ITEMS, MAX_LEN)
        kernel, store.kernel = store.kernel, None
        try:
            return np.ascontiguousarray(store.lookup_blocks(blocks), "<f4").tobytes()
        finally:
            store.kernel = kernel
    except (FormatError, RequestError):
        return None


def _body(store: Store, strings: dict, rng: random.Random) -> bytes:
    blocks = []
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(store.features)
        known = sorted(strings[name].values())
        n = rng.choice([0, 1, 2, 7, 64, 300])
        values = [rng.choice([*known[:50], "", None, "unseen", "é€𝄞", str(rng.randint(0, 10**9))]) for _ in range(n)]
        if rng.random() < 0.5:
            ids = hash64_strings([v or "" for v in values])
            extremes = np.array([MISSING_ID, 0, -1, -(2**63), 2**63 - 1, store.direct.vocabularies.empty if store.direct.vocabularies else 7])
            ids = np.concatenate([ids, rng.choice([ids[:0], extremes]), np.array([rng.getrandbits(63) for _ in range(rng.randint(0, 5))])])
            blocks.append((name, ids.astype(np.int64)))
        else:
            blocks.append((name, values))
    return encode(blocks)


@needs_kernel
@pytest.mark.parametrize("key", WANTED, ids=["-".join(k) for k in WANTED])
def test_bodies_answer_as_the_numpy_path(stores, key):
    store = stores[key]
    assert store.kernel is not None
    rng = random.Random(hash(key) % 1000)
    for _ in range(40):
        body = _body(store, stores["strings"], rng)
        expected = _numpy(store, body)
        assert expected is not None
        assert store.kernel.answer(body, MAX_ITEMS, MAX_LEN) == expected
    feature = store.features[1]
    texts = [rng.choice(["", None, "x", f"{feature}_3"]) for _ in range(500)]
    ids = hash64_strings([t or "" for t in texts])
    for got in (store.lookup(feature, texts), store.lookup(feature, ids)):  # the bulk API through Kernel.fill
        kernel, store.kernel = store.kernel, None
        expected = store.lookup(feature, ids)
        store.kernel = kernel
        assert got.view(np.uint32).tolist() == expected.view(np.uint32).tolist()


def _raw_strings(name: str, values: list[bytes]) -> bytes:
    """An ids.v1 body of one strings block holding ``values`` as given (valid UTF-8 or not)."""
    head = b"RIDS\x01\x00\x01\x00" + len(name.encode()).to_bytes(2, "little") + name.encode() + b"\x01" + len(values).to_bytes(4, "little")
    return head + b"".join(len(v).to_bytes(4, "little") for v in values) + b"".join(values)


@needs_kernel
def test_strings_split_inside_a_character_and_limits(stores):
    """A character split over two values is valid UTF-8 as a block (the numpy path decodes the
    block's bytes whole); a value or name over the limits, or too many values, is left to Python."""
    store = stores[("full", "int8")]
    name = store.features[0]
    split = _raw_strings(name, ["é".encode()[:1], "é".encode()[1:]])
    assert _numpy(store, split) is not None and store.kernel.answer(split, MAX_ITEMS, MAX_LEN) == _numpy(store, split)
    long = encode([(name, ["a" * MAX_LEN, "b" * (MAX_LEN + 1)])])
    many = encode([(name, np.arange(MAX_ITEMS - 1)), (store.features[1], np.arange(2))])
    bad = [b"\xed\xb3\xbf", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"\xff", b"abc\xc3"]
    for body in (long, many, encode([("nope", ["a"])]), *(_raw_strings(name, [b"ok", v]) for v in bad)):
        assert _numpy(store, body) is None and store.kernel.answer(body, MAX_ITEMS, MAX_LEN) is None, body[:40]
    good = [b"\xf4\x8f\xbf\xbf", b"\xed\x9f\xbf", b"\xf0\x90\x80\x80", b"\xef\xbf\xbf", b"\x00", b"a" * 9 + b"\xc3\xa9" + b"b" * 17]
    body = _raw_strings(name, good)
    assert _numpy(store, body) is not None and store.kernel.answer(body, MAX_ITEMS, MAX_LEN) == _numpy(store, body)
    assert len(store.kernel.answer(many, MAX_ITEMS + 1, MAX_LEN)) == (MAX_ITEMS + 1) * store.width * 4
    assert store.kernel.answer(encode([]), MAX_ITEMS, MAX_LEN) == b"" == _numpy(store, encode([]))
    blocks = encode([(store.features[b % len(store.features)], np.array([b, MISSING_ID], np.int64)) for b in range(300)])  # past the stack's 64
    assert store.kernel.answer(blocks, MAX_ITEMS, MAX_LEN) == _numpy(store, blocks) is not None


@needs_kernel
def test_mutated_bodies_are_answered_alike_or_left_to_python(stores):
    store = stores[("full", "int4")]
    rng = random.Random(11)
    base = [_body(store, stores["strings"], rng) for _ in range(8)]
    for _ in range(1500):
        body = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.4 and body:
                body[rng.randrange(len(body))] = rng.randrange(256)
            elif op < 0.7 and body:
                del body[rng.randrange(len(body)) :]
            else:
                body[rng.randrange(len(body) + 1) : 0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        got = store.kernel.answer(bytes(body), MAX_ITEMS, MAX_LEN)
        assert got == _numpy(store, bytes(body)) or (got is None and _numpy(store, bytes(body)) is None)


@needs_kernel
def test_crowded_vocabularies(stores):
    """Every entry's bucket overflows: the kernel searches the overflow array as numpy does."""
    store = stores[("full", "fp32")]
    paths = [store.loaded.folder / store.manifest.dataset.vocabularies[n] for n in store.features]
    crowded = Vocabularies(paths, load=64.0)
    assert len(crowded.over_ids) > 0.9 * crowded.entries
    store.encoder.vocabularies = store.direct.vocabularies = crowded
    store.kernel = compiled.kernel(store.direct)
    rng = random.Random(2)
    for _ in range(20):
        body = _body(store, stores["strings"], rng)
        assert store.kernel.answer(body, MAX_ITEMS, MAX_LEN) == _numpy(store, body)


@needs_kernel
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN arithmetic in the numpy path
@pytest.mark.parametrize("key", [("full", "fp16"), ("full", "int8"), ("hash", "int4")], ids=["fp16", "int8", "int4"])
def test_adversarial_stored_bits(stores, key):
    """Random stored bytes (fp16 NaNs, infinities, subnormals, -0; random scales and biases) decode alike."""
    store = stores[key]
    rng = np.random.default_rng(4)
    for t in store.direct.tables:
        raw = t.view(np.uint8)
        raw[...] = rng.integers(0, 256, raw.shape, np.uint8)
        raw[:4] = 0
        if store.direct.layout.bits:  # q = 0, scale -0, bias -0: the sum is -0 before the pooled + 0
            at = store.direct.layout.sb_offset
            raw[:4, at : at + 4] = [0, 0x80, 0, 0x80]
        else:
            raw[:4, 1::2] = 0x80  # -0.0 halves
    rows = np.concatenate([np.arange(len(t)) for t in store.direct.tables])
    feature = np.concatenate([np.full(len(t), j) for j, t in enumerate(store.direct.tables)]).astype(np.int64)
    expected = store.direct.vectors(feature, rows, np.ones(len(rows), bool))
    got = np.empty_like(expected)
    if store.direct.hashed:  # Kernel.fill reads rows through the hash: compare on ids instead, then all rows by the index path
        ids = np.arange(len(rows), dtype=np.int64)
        got = np.empty((len(ids), store.width), np.float32)
        store.kernel.fill(feature, ids, got)
        ref = store.direct.from_ids(feature, ids)
        assert got.view(np.uint32).tolist() == ref.view(np.uint32).tolist()
        return
    v = store.direct.vocabularies  # every row j of every table, read through its vocabulary id
    ids = []
    for j, t in enumerate(store.direct.tables):
        start, n = int(v.start[j]) * 8, int(v.count[j]) * 8
        by_index = dict(zip(v.index[start : start + n].tolist(), v.ids[start : start + n].tolist()))
        ids += [by_index.get(r, MISSING_ID if r == 0 else 1234567) for r in range(len(t))]
    ids = np.array(ids, np.int64)
    store.kernel.fill(feature, ids, got)
    ref = store.direct.from_ids(feature, ids)
    assert got.view(np.uint32).tolist() == ref.view(np.uint32).tolist()
    assert np.isnan(ref).any() or key[1] != "fp16"


def test_without_the_extension_the_numpy_path_serves_with_one_warning(stores, monkeypatch, caplog):
    store = stores[("full", "int8")]
    monkeypatch.setattr(compiled, "idpath", None)
    monkeypatch.setattr(compiled, "_warned", False)
    monkeypatch.setattr(compiled, "_MISSING", "No module named 'recsys.serving.idpath'", raising=False)
    with caplog.at_level("WARNING", logger="recsys.serving.compiled"):
        assert compiled.kernel(store.direct) is None and compiled.kernel(store.direct) is None
    assert [r.getMessage() for r in caplog.records] == [
        "recsys.serving.idpath is not built (No module named 'recsys.serving.idpath'): lookups use the numpy path; `make install` builds it"
    ]
    monkeypatch.setattr(store, "kernel", None)
    feature = store.features[0]
    assert store.lookup(feature, ["a", None]).shape == (2, store.width)  # the numpy path answers
