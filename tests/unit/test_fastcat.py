"""The compiled categorical kernels (recsys.data.fastcat) against their numpy/pyarrow references, bit for bit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.data import kernels
from recsys.data.parse import MISSING_ID, hash_multi, hash_single, hash_single_reference
from recsys.data.vocab import FastCounter, FrequencyCounter, Vocabulary
from recsys.features import MISSING_INDEX, OOV_INDEX
from recsys.hashing import hash64_str, hash64_strings
from tests.convert_support import assert_same_without

pytest.importorskip("recsys.data.fastcat", reason="the C extension is not built (pip install -e .); scripts/check_install.py fails then")


def _random_strings(rng: np.random.Generator, n: int) -> list[str | None]:
    """Short hex, empty, None, non-ASCII and a few very long values."""
    alphabet = ["a", "Z", "0", "9", "é", "ß", "中", "😀", "\t", " ", "\x00"]
    out: list[str | None] = []
    for _ in range(n):
        kind = rng.integers(10)
        if kind == 0:
            out.append(None)
        elif kind == 1:
            out.append("")
        elif kind == 2:
            out.append("".join(rng.choice(alphabet, rng.integers(1, 30))))
        else:
            out.append(f"{int(rng.integers(1 << 32)):08x}")
    return out + ["x" * 100_000, "é" * 5_000, None, ""]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_hash_array_equals_the_reference_on_random_and_adversarial_strings(kind):
    rng = np.random.default_rng(0)
    values = _random_strings(rng, 3000)
    arr = pa.array(values, kind)
    expected = hash64_strings([v or "" for v in values])
    assert np.array_equal(kernels.hash_array(arr), expected)
    assert np.array_equal(hash_single(arr).ids, hash_single_reference(arr.cast(pa.string())).ids)
    assert kernels.hash_array(pa.array([None, ""], kind)).tolist() == [MISSING_ID, MISSING_ID]
    assert kernels.hash_array(pa.array(["é"], kind))[0] == hash64_str("é")
    for start, stop in [(1, 2999), (17, 18), (500, 500), (2990, len(values))]:  # slices: a non-zero array offset
        assert np.array_equal(kernels.hash_array(arr.slice(start, stop - start)), expected[start:stop]), (start, stop)
    chunked = pa.chunked_array([arr.slice(0, 5), arr.slice(5, 0), arr.slice(5, 1000), arr.slice(1005)], kind)
    assert np.array_equal(kernels.hash_array(chunked), expected)
    assert np.array_equal(hash_single(chunked).ids, expected)
    assert kernels.hash_array(pa.array([], kind)).shape == (0,)


def test_a_null_slot_hashes_as_empty_whatever_bytes_it_covers():
    data = pa.py_buffer(b"abcdef")
    offsets = pa.py_buffer(np.array([0, 3, 6], np.int32).tobytes())
    validity = pa.py_buffer(bytes([0b10]))  # value 0 null, though its offsets cover "abc"
    arr = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, data], null_count=1)
    assert kernels.hash_array(arr).tolist() == [MISSING_ID, hash64_str("def")]


def test_offsets_outside_the_data_are_refused():
    offsets = np.array([0, 3, 60], np.int32).tobytes()  # pyarrow refuses to build such an array: call the kernel itself
    out = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="value 1 has offsets outside the data buffer"):
        kernels.module().hash_strings(None, offsets, b"abcdef", 0, 2, False, out)
    with pytest.raises(ValueError, match="offsets buffer of 12 bytes is too short for 3 values at offset 0"):
        kernels.module().hash_strings(None, offsets, b"abcdef", 0, 3, False, np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="expected string values, got int64"):
        kernels.hash_array(pa.array([1, 2]))


def test_hash_multi_is_unchanged_by_the_kernel():
    col = pa.array(["a|b||é", None, "", "x|x", "|" * 5 + "z"])
    got = hash_multi(col, "|")
    assert got.offsets.tolist() == [0, 3, 3, 3, 5, 6]
    assert got.ids.tolist() == [hash64_str(v) for v in ["a", "b", "é", "x", "x", "z"]]


def _ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Skewed ids with the adversarial ones: 0, -1, the int64 extremes and the missing id."""
    ids = rng.integers(-(1 << 63), (1 << 63) - 1, 5000, dtype=np.int64)
    ids[:6] = [0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, MISSING_ID]
    return ids[np.minimum((len(ids) * rng.random(n) ** 3).astype(np.int64), len(ids) - 1)]


def test_counter_counts_like_the_frequency_counter():
    rng = np.random.default_rng(1)
    reference, fast = FrequencyCounter(merge_at=700), FastCounter()
    for _ in range(12):  # many batches: the compiled table grows from 1024 slots several times
        ids = _ids(rng, int(rng.integers(0, 3000)))
        rows = rng.random(len(ids)) < 0.8
        reference.add(*np.unique(ids[rows], return_counts=True))
        fast.add_rows(ids, rows)
        counts = rng.integers(1, 5, 40)
        reference.add(ids[:40], counts[: len(ids[:40])])
        fast.add(ids[:40], counts[: len(ids[:40])])
    ref_ids, ref_counts = reference.result()
    keep = ref_ids != MISSING_ID  # the compiled counter never counts the missing value
    got_ids, got_counts = fast.result()
    assert np.array_equal(got_ids, ref_ids[keep]) and np.array_equal(got_counts, ref_counts[keep])
    assert 0 in got_ids.tolist() and len(fast) == len(got_ids)
    vocab_ref, vocab_fast = Vocabulary.from_counts(ref_ids, ref_counts, 2), Vocabulary.from_counts(got_ids, got_counts, 2)
    assert np.array_equal(vocab_ref.ids, vocab_fast.ids) and vocab_ref.num_distinct == vocab_fast.num_distinct


def test_counter_refuses_mismatched_inputs():
    fast = FastCounter()
    with pytest.raises(ValueError, match="3 ids but 2 row flags"):
        fast.add_rows(np.arange(3), np.ones(2, bool))
    with pytest.raises(ValueError, match="3 ids but 1 counts"):
        fast.add(np.arange(3), np.ones(1, np.int64))
    assert len(fast) == 0


def test_vocabulary_lookup_equals_the_pandas_reference():
    rng = np.random.default_rng(2)
    vocab_ids = np.unique(rng.integers(-(1 << 63), (1 << 63) - 1, 20_000, dtype=np.int64))
    vocab_ids = np.concatenate([[0, -1], vocab_ids[(vocab_ids != 0) & (vocab_ids != -1)]])
    rng.shuffle(vocab_ids)
    vocab = Vocabulary(vocab_ids, np.ones(len(vocab_ids), np.int64), len(vocab_ids))
    asked = np.concatenate([vocab_ids[rng.integers(0, len(vocab_ids), 30_000)], rng.integers(-(1 << 62), 1 << 62, 5000), [MISSING_ID, 0, 7]])
    got = vocab.lookup(asked)
    assert np.array_equal(got, vocab.lookup_reference(asked))
    assert got[-3] == MISSING_INDEX and got[-2] == 2 + int(np.flatnonzero(vocab_ids == 0)[0])
    empty = Vocabulary(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    assert empty.lookup(asked[-3:]).tolist() == empty.lookup_reference(asked[-3:]).tolist() == [MISSING_INDEX, OOV_INDEX, OOV_INDEX]
    with pytest.raises(ValueError, match="position 2 is a duplicate"):
        kernels.IdIndex(np.array([5, 6, 5], np.int64))


def test_a_conversion_without_the_kernel_writes_the_same_bytes_and_warns_once(tmp_path):
    assert_same_without("recsys.data.fastcat", tmp_path, rows=2000, seed=5)
