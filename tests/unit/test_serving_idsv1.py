"""The ids.v1 binary request format (round trip, every malformed body a FormatError naming where)
and the bulk in-process API ``Store.lookup``, bit-identical to the pair lookups."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from recsys.export import export_run
from recsys.hashing import hash64_strings
from recsys.serving.encode import MISSING_ID, RequestError
from recsys.serving.idsv1 import FormatError, decode, encode
from recsys.serving.store import Store
from tests.serving_support import ensure_runs


def test_round_trip_of_raw_ids_and_strings():
    ids = np.array([0, -1, 2**63 - 1, -(2**63), 12345], np.int64)
    texts = ["68fd1e64", "", None, "é∂ü", "x" * 300]
    blocks = decode(encode({"C1": ids, "C2": texts, "C3": np.array([], np.int64), "C4": []}), 4096, 1024)
    assert [f for f, _ in blocks] == ["C1", "C2", "C3", "C4"]
    np.testing.assert_array_equal(blocks[0][1], ids)
    np.testing.assert_array_equal(blocks[1][1], hash64_strings(["68fd1e64", "", "", "é∂ü", "x" * 300]))
    assert blocks[1][1][1] == blocks[1][1][2] == MISSING_ID
    assert len(blocks[2][1]) == len(blocks[3][1]) == 0
    unsigned = decode(encode({"C1": ids.view(np.uint64)}), 10, 10)[0][1]  # uint64 goes out as its int64 view
    np.testing.assert_array_equal(unsigned, ids)
    rng = np.random.default_rng(0)  # many strings of unequal lengths: the other hashing branch
    many = ["".join(chr(97 + k) for k in rng.integers(0, 26, rng.integers(0, 40))) for _ in range(500)]
    np.testing.assert_array_equal(decode(encode({"C9": many}), 4096, 1024)[0][1], hash64_strings(many))


def test_every_truncation_is_a_format_error_naming_the_offset():
    body = encode({"C1": np.arange(3, dtype=np.int64), "C2": ["ab", "cde"]})
    for cut in range(len(body)):
        with pytest.raises(FormatError, match="offset"):
            decode(body[:cut], 4096, 1024)
    with pytest.raises(FormatError, match=r"4 bytes after the last block \(offset %d\)" % len(body)):
        decode(body + b"\0" * 4, 4096, 1024)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"JSON" + bytes(4), "offset 0 holds b'JSON'"),
        (b"RIDS\x02\x00\x01\x00", "version 2"),
        (b"RIDS\x01\x01\x01\x00", "flags 1"),
        (b"RIDS\x01\x00\x01\x00" + struct.pack("<H", 0) + b"\x00" + struct.pack("<I", 0), "feature name of 0 bytes"),
        (b"RIDS\x01\x00\x01\x00" + struct.pack("<H", 2) + b"\xff\xfe" + b"\x00" + struct.pack("<I", 0), "not valid UTF-8"),
        (b"RIDS\x01\x00\x01\x00" + struct.pack("<H", 2) + b"C1" + b"\x07" + struct.pack("<I", 0), "kind 7 at offset 12"),
        (b"RIDS\x01\x00\x01\x00" + struct.pack("<H", 2) + b"C1" + b"\x00" + struct.pack("<I", 2**32 - 1), "needs 34359738360 bytes"),
    ],
)
def test_malformed_headers_name_what_and_where(body, message):
    with pytest.raises(FormatError, match=message.replace("(", r"\(")):
        decode(body, 2**40, 1024)


def test_bad_values_and_limits_name_the_feature():
    bad_utf8 = b"RIDS\x01\x00\x01\x00" + struct.pack("<H", 2) + b"C5" + b"\x01" + struct.pack("<III", 2, 1, 2) + b"ok\xc3"
    with pytest.raises(FormatError, match=r"feature 'C5': value 1 \(offset 26\) is not valid UTF-8"):
        decode(bad_utf8, 4096, 1024)
    with pytest.raises(FormatError, match="'C2'.*more than 5 values"):
        decode(encode({"C1": np.arange(3), "C2": np.arange(3)}), 5, 1024)
    with pytest.raises(FormatError, match="feature 'C1': value 1 has 9 bytes, more than 8"):
        decode(encode({"C1": ["a", "x" * 9]}), 10, 8)


def test_random_garbage_never_escapes_as_another_error():
    rng = random.Random(3)
    good = encode({"C1": np.arange(5, dtype=np.int64), "C2": ["a", "bb", ""]})
    for _ in range(3000):
        body = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        try:
            decode(bytes(body), 4096, 64)
        except FormatError:
            pass


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Store]:
    _, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    out = tmp_path_factory.mktemp("bulk")
    export_run(runs["full"], out / "full-int8", dtype="int8")
    export_run(runs["hash"], out / "hash-fp32", dtype="fp32")
    return {k: Store.open(out / k) for k in ("full-int8", "hash-fp32")}


@pytest.mark.parametrize("name", ["full-int8", "hash-fp32"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "module"])
def test_bulk_lookup_is_bit_identical_to_pair_lookups(stores, name, direct, monkeypatch):
    store = stores[name]
    if not direct:
        monkeypatch.setattr(store, "direct", None)
    rng = random.Random(5)
    feature = store.features[2]
    texts = [rng.choice([f"{feature}_{rng.randint(0, 40)}", "unseen", "", None]) for _ in range(300)]
    expected = store.embeddings([(feature, t) for t in texts])
    by_text = store.lookup(feature, texts)
    by_id = store.lookup(feature, hash64_strings([t or "" for t in texts]))
    by_array = store.lookup(feature, np.array(texts, dtype=object))
    for got in (by_text, by_id, by_array, store.lookup(feature, hash64_strings([t or "" for t in texts]).view(np.uint64))):
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    blocks = [(store.features[0], hash64_strings(["a", "b"])), (feature, np.zeros(0, np.int64)), (feature, hash64_strings(texts))]
    pairs = [(store.features[0], "a"), (store.features[0], "b"), *((feature, t) for t in texts)]
    assert np.array_equal(store.lookup_blocks(blocks).view(np.uint32), store.embeddings(pairs).view(np.uint32))
    assert store.lookup(feature, []).shape == store.lookup_blocks([]).shape == (0, store.width)


def test_bulk_lookup_errors_name_the_feature_or_value(stores):
    store = stores["hash-fp32"]
    with pytest.raises(RequestError, match="unknown sparse feature 'nope'"):
        store.lookup("nope", np.arange(3))
    with pytest.raises(RequestError, match="unknown sparse feature 'nope'"):
        store.lookup_blocks([(store.features[0], np.arange(2)), ("nope", np.arange(1))])
    with pytest.raises(RequestError, match="got a float"):
        store.lookup(store.features[0], np.array([1.5, 2.0]))
