"""Streaming frequency counts of raw ids, and vocabularies built from them.

``FrequencyCounter`` keeps a table sorted by id plus a buffer of new (id, count) pairs; the
buffer is merged in (``searchsorted`` + ``insert``, linear in the table) when it grows, so
memory stays about 16 bytes per distinct id. ``new_counter`` gives the compiled twin
(``recsys.data.kernels.IdCounter``) when it is built. ``Vocabulary`` orders ids by decreasing
count, then increasing id, and maps ids to indices: 0 missing, 1 out of vocabulary, 2.. vocabulary
(a compiled hash table when built, else a pandas index).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import kernels
from recsys.data.parse import MISSING_ID, SparseValues
from recsys.features import MISSING_INDEX, NUM_RESERVED, OOV_INDEX, DatasetSpec
from recsys.storage import StoragePath, location, read_parquet


class FrequencyCounter:
    """Counts of int64 ids, fed in batches of (distinct ids, counts)."""

    def __init__(self, merge_at: int = 1 << 20) -> None:
        self.ids = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._buf_ids: list[np.ndarray] = []
        self._buf_counts: list[np.ndarray] = []
        self._buffered = 0
        self._merge_at = merge_at

    def add(self, ids: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts[i]`` occurrences of ``ids[i]``."""
        if len(ids) == 0:
            return
        self._buf_ids.append(np.asarray(ids, np.int64))
        self._buf_counts.append(np.asarray(counts, np.int64))
        self._buffered += len(ids)
        if self._buffered >= max(self._merge_at, len(self.ids) // 4):
            self._merge()

    def add_values(self, values: SparseValues, rows: np.ndarray) -> None:
        """Count the values of the rows where ``rows`` is true (the missing value excluded)."""
        self.add(*values.counts(rows))

    def _merge(self) -> None:
        if not self._buf_ids:
            return
        ids, inverse = np.unique(np.concatenate(self._buf_ids), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(self._buf_counts), minlength=len(ids)).astype(np.int64)
        self._buf_ids, self._buf_counts, self._buffered = [], [], 0
        pos = np.searchsorted(self.ids, ids)
        found = pos < len(self.ids)
        found[found] = self.ids[pos[found]] == ids[found]
        self.counts[pos[found]] += counts[found]
        new = ~found
        self.ids = np.insert(self.ids, pos[new], ids[new])
        self.counts = np.insert(self.counts, pos[new], counts[new])

    def __len__(self) -> int:
        """Distinct ids counted (at most: the buffer may repeat some)."""
        return len(self.ids) + self._buffered

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids sorted ascending, counts)."""
        self._merge()
        return self.ids, self.counts


class FastCounter(kernels.IdCounter):
    """``FrequencyCounter``'s counts in the compiled hash table."""

    def add_values(self, values: SparseValues, rows: np.ndarray) -> None:
        """Count the values of the rows where ``rows`` is true (the missing value excluded)."""
        self.add_rows(values.ids, rows if values.offsets is None else np.repeat(rows, np.diff(values.offsets)))


CountTable = FrequencyCounter | FastCounter


def new_counter() -> CountTable:
    """A frequency counter: compiled when built, else the numpy reference."""
    return FastCounter() if kernels.compiled() else FrequencyCounter()


def by_decreasing_count(counts: np.ndarray) -> np.ndarray:
    """``np.argsort(-counts, kind="stable")``; by a radix sort of 16-bit keys when the counts span at most 65,535."""
    if len(counts) and int(counts.max()) - int(counts.min()) <= 0xFFFF:
        return np.argsort((counts.max() - counts).astype(np.uint16), kind="stable")
    return np.argsort(-counts, kind="stable")


class Vocabulary:
    """Ids seen at least ``min_count`` times, by decreasing count then increasing id."""

    def __init__(self, ids: np.ndarray, counts: np.ndarray, num_distinct: int) -> None:
        self.ids = ids
        self.counts = counts
        self.num_distinct = num_distinct
        self._table = kernels.IdIndex(ids) if kernels.compiled() else None
        self._index = None if self._table is not None else pd.Index(ids)
        if self._index is not None:
            self._index.get_indexer(ids[:1])  # build the hash table now, not concurrently in lookups

    @classmethod
    def from_counts(cls, ids: np.ndarray, counts: np.ndarray, min_count: int) -> "Vocabulary":
        """From ids sorted ascending (as ``FrequencyCounter.result`` gives them) and their counts."""
        keep = (counts >= min_count) & (ids != MISSING_ID)
        kept_ids, kept_counts = ids[keep], counts[keep]
        order = by_decreasing_count(kept_counts)
        return cls(kept_ids[order], kept_counts[order], int(np.count_nonzero(ids != MISSING_ID)))

    @property
    def cardinality(self) -> int:
        return len(self.ids) + NUM_RESERVED

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Vocabulary index of each raw id."""
        if self._table is not None:
            return self._table.lookup(ids, MISSING_INDEX, OOV_INDEX, NUM_RESERVED)
        return self.lookup_reference(ids)

    def lookup_reference(self, ids: np.ndarray) -> np.ndarray:
        """``lookup`` by a pandas index (the reference of the compiled table)."""
        index = self._index if self._index is not None else pd.Index(self.ids)
        pos = index.get_indexer(ids) if len(self.ids) else np.full(len(ids), -1, np.int64)
        out = pos.astype(np.int64) + NUM_RESERVED
        out[pos < 0] = OOV_INDEX
        out[ids == MISSING_ID] = MISSING_INDEX
        return out

    def write(self, path: Path) -> None:
        """``id``, ``count`` columns; row r is index r + 2."""
        table = pa.table({"id": pa.array(self.ids, pa.int64()), "count": pa.array(self.counts, pa.int64())})
        pq.write_table(table, path, use_dictionary=["count"])


def read_value_counts(spec: DatasetSpec, data_dir: str | Path | StoragePath) -> dict[str, np.ndarray]:
    """Per sparse field with a vocabulary file, its ``count`` column (index 2.. order, int64);
    ``data_dir`` is a folder or a URI (``recsys.storage``)."""
    root = location(data_dir)
    out: dict[str, np.ndarray] = {}
    for f in spec.sparse_fields:
        if f.vocabulary:
            path = root / f.vocabulary
            try:
                out[f.name] = read_parquet(path, columns=["count"]).column("count").to_numpy().astype(np.int64)
            except (OSError, KeyError, pa.ArrowInvalid) as exc:
                raise ValueError(f"{path}: cannot read the value counts of field '{f.name}': {exc}") from exc
    return out
