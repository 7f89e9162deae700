"""The hash-table vocabulary index answers exactly as the sorted-key binary search it replaced and as
a search in each feature's own file: random ids, signed extremes, ids equal but for their low bits,
crowded buckets (overflow), one id in several features, repeated ids in a file, the empty-slot
marker asked for, unseen and missing ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.features import MISSING_INDEX, OOV_INDEX
from recsys.serving.vocabulary import BUCKET, MISSING_ID, SortedVocabularies, Vocabularies


def _vocabulary_file(path, ids: np.ndarray, index: np.ndarray | None = None) -> None:
    order = np.argsort(ids, kind="stable")
    index = np.arange(2, 2 + len(ids), dtype=np.int32) if index is None else index
    table = pa.table({"id": ids[order].astype(np.int64), "index": index[order].astype(np.int32)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _files(tmp_path, sets: list[np.ndarray]) -> list:
    for j, ids in enumerate(sets):
        _vocabulary_file(tmp_path / f"{j}.arrow", ids)
    return [tmp_path / f"{j}.arrow" for j in range(len(sets))]


NEAR = np.array([5 << 8, (5 << 8) | 1, (5 << 8) | 3, (5 << 8) | 6], np.int64)  # 3 feature bits: one sorted key


def _sets(rng) -> list[np.ndarray]:
    return [np.unique(np.concatenate([rng.integers(-(2**63), 2**63 - 1, 300), NEAR + k, [-(2**63), -1, 0, 2**63 - 1]])) for k in range(4)] + [
        np.zeros(0, np.int64)
    ]


@pytest.mark.parametrize("kind", [Vocabularies, SortedVocabularies])
def test_vocabularies_equal_a_search_per_feature(tmp_path, kind):
    rng = np.random.default_rng(0)
    sets = _sets(rng)
    vocab = kind(_files(tmp_path, sets))
    if kind is SortedVocabularies:
        assert vocab.bits == 3 and vocab.run > 1
    for j, ids in enumerate(sets):
        asked = np.concatenate([ids, sets[(j + 1) % len(sets)], NEAR + 8, rng.integers(-(2**63), 2**63 - 1, 50), [MISSING_ID]])
        expected = np.full(len(asked), OOV_INDEX, np.int64)
        if len(ids):
            pos = np.minimum(ids.searchsorted(asked), len(ids) - 1)
            found = ids[pos] == asked
            expected[found] = 2 + pos[found]
        expected[asked == MISSING_ID] = MISSING_INDEX
        for chunk in (asked[:1], asked[:20], asked):  # unsorted and sorted searches
            n = len(chunk)
            assert vocab.lookup(np.full(n, j), chunk).tolist() == expected[:n].tolist(), j
        assert vocab.max_index[j] == (len(ids) + 1 if len(ids) else -1)


@pytest.mark.parametrize("load", [0.75, 4.0, 64.0])  # 64 entries a slot: nearly every entry overflows its bucket
def test_crowded_buckets_and_shared_ids_equal_the_sorted_search(tmp_path, load):
    rng = np.random.default_rng(1)
    shared = rng.integers(-(2**63), 2**63 - 1, 40)  # the same ids in every feature (a common value's hash)
    sets = [np.unique(np.concatenate([shared, rng.integers(-(2**63), 2**63 - 1, 500 * (k + 1)), np.arange(k * 7, k * 7 + 30)])) for k in range(3)]
    paths = _files(tmp_path, sets)
    new, old = Vocabularies(paths, load=load), SortedVocabularies(paths)
    if load > 1:
        assert len(new.over_ids) > 0 and new.full.any()
    if load == 64.0:
        assert new.over_run == len(sets)  # each shared id overflows in every feature: found by feature
    every = np.concatenate(sets)
    asked = np.concatenate(
        [every, shared, every + 1, np.arange(-5, 120), rng.integers(-(2**63), 2**63 - 1, 300), [new.empty, MISSING_ID, -(2**63), 2**63 - 1]]
    )
    for f in range(len(sets)):
        for chunk in (asked[:3], asked[:47], asked[:48], asked):
            feature = np.full(len(chunk), f, np.int64)
            assert np.array_equal(new.lookup(feature, chunk), old.lookup(feature, chunk)), (f, len(chunk))
    mixed = rng.integers(0, len(sets), len(asked))  # one request over every feature
    assert np.array_equal(new.lookup(mixed, asked), old.lookup(mixed, asked))
    assert np.array_equal(new.lookup_present(mixed, asked), old.lookup_present(mixed, asked))


def test_the_empty_marker_is_no_vocabulary_id_and_asking_it_is_unseen(tmp_path):
    """Ids 0..n in a vocabulary push the marker of empty slots past them; asking for it is OOV."""
    ids = np.arange(0, 50, dtype=np.int64)
    vocab = Vocabularies(_files(tmp_path, [ids]))
    assert vocab.empty not in set(ids.tolist()) and vocab.empty == 50
    got = vocab.lookup(np.zeros(4, np.int64), np.array([vocab.empty, 0, 49, 51], np.int64))
    assert got.tolist() == [OOV_INDEX, 2, 51, OOV_INDEX]
    assert len(vocab.ids) % BUCKET == 0 and vocab.nbytes > 0


def test_repeated_ids_in_a_file_answer_as_the_sorted_search(tmp_path):
    """A file holding one id twice (not written by the exporter, but readable): the later entry wins in both."""
    ids = np.array([3, 7, 7, 9, -4], np.int64)
    _vocabulary_file(tmp_path / "0.arrow", ids, np.array([2, 3, 4, 5, 6], np.int32))
    paths = [tmp_path / "0.arrow"]
    asked = np.array([3, 7, 9, -4, 8], np.int64)
    zero = np.zeros(len(asked), np.int64)
    assert Vocabularies(paths).lookup(zero, asked).tolist() == SortedVocabularies(paths).lookup(zero, asked).tolist() == [2, 4, 5, 6, OOV_INDEX]
