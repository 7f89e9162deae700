"""Parquet rows to ``Batch`` (dense tensor, KeyedJaggedTensor, labels), vectorised.

``BatchLayout`` says which columns become what; ``table_to_batch`` converts one Arrow table
(from pyarrow directly or from a Ray Data batch in ``pyarrow`` format); ``ParquetBatchReader``
iterates a split of a dataset folder (a path or a URI, ``recsys.storage``) with seeded, reproducible shuffling.

Example:
    >>> layout = BatchLayout.from_spec(spec, id_scheme="index")      # doctest: +SKIP
    >>> for batch in ParquetBatchReader(folder, "train", layout, batch_size=2048, seed=0):
    ...     model(batch.dense_features, batch.sparse_features)        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal, Protocol

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.features import LABEL_COLUMN, PROB_COLUMN, DatasetSpec, id_column, load_dataset_spec, weight_column
from recsys.storage import StoragePath, location, read_parquet

IdSchemeName = Literal["index", "raw"]


@dataclass
class Batch:
    """One training/eval batch, as TorchRec models take it."""

    dense_features: torch.Tensor  # [B, num_dense] float32
    sparse_features: KeyedJaggedTensor  # keys = sparse field names
    labels: torch.Tensor  # [B] float32
    probs: torch.Tensor | None = None  # [B] true click probability (synthetic data only)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.dense_features.to(device, non_blocking=non_blocking),
            self.sparse_features.to(device=torch.device(device), non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            None if self.probs is None else self.probs.to(device, non_blocking=non_blocking),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Preparer(Protocol):
    """What ``prepared`` needs of an embedding method: its id-only input transform."""

    def prepare(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor: ...


def prepared(method: Preparer, batch: Batch) -> Batch:
    """``batch`` with its sparse features through ``method.prepare`` (see ``EmbeddingMethod.prepare``)."""
    return replace(batch, sparse_features=method.prepare(batch.sparse_features))


@dataclass(frozen=True)
class BatchLayout:
    """Which Parquet columns feed the batch.

    ``id_scheme="index"`` feeds vocabulary indices (collisionless and vocabulary-based methods);
    ``"raw"`` feeds the raw 64-bit ids (hashing methods; unseen values still hash somewhere).
    """

    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    id_scheme: IdSchemeName = "index"
    multi_valued: frozenset[str] = frozenset()
    weighted: frozenset[str] = frozenset()
    with_probs: bool = False

    @classmethod
    def from_spec(cls, spec: DatasetSpec, id_scheme: IdSchemeName = "index") -> "BatchLayout":
        if id_scheme not in ("index", "raw"):
            raise ValueError(f"id_scheme must be 'index' or 'raw', got '{id_scheme}'")
        return cls(
            dense=tuple(f.name for f in spec.dense_fields),
            sparse=tuple(f.name for f in spec.sparse_fields),
            id_scheme=id_scheme,
            multi_valued=frozenset(f.name for f in spec.sparse_fields if f.multi_valued),
            weighted=frozenset(f.name for f in spec.sparse_fields if f.weighted),
            with_probs=spec.source == "synthetic",
        )

    def sparse_column(self, name: str) -> str:
        return id_column(name) if self.id_scheme == "raw" else name

    def columns(self) -> list[str]:
        cols = [LABEL_COLUMN, *self.dense]
        cols += [self.sparse_column(n) for n in self.sparse]
        cols += [weight_column(n) for n in self.sparse if n in self.weighted]
        if self.with_probs:
            cols.append(PROB_COLUMN)
        return cols


def _numpy(col: pa.ChunkedArray | pa.Array, dtype: np.dtype) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, flat values) of a list column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    offsets = col.offsets.to_numpy()
    lengths = np.diff(offsets).astype(np.int32)
    flat = col.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    return lengths, flat


def table_to_batch(table: pa.Table, layout: BatchLayout) -> Batch:
    """Convert an Arrow table with the layout's columns into a ``Batch`` (no per-row Python)."""
    n = table.num_rows
    labels = torch.from_numpy(_numpy(table.column(LABEL_COLUMN), np.float32).copy())
    if layout.dense:
        dense = np.stack([_numpy(table.column(c), np.float32) for c in layout.dense], axis=1)
    else:
        dense = np.zeros((n, 0), np.float32)
    lengths_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    any_weighted = bool(layout.weighted)
    for name in layout.sparse:
        col = table.column(layout.sparse_column(name))
        if name in layout.multi_valued:
            lengths, flat = _list_parts(col)
            values = flat.astype(np.int64, copy=False)
        else:
            lengths = np.ones(n, np.int32)
            values = _numpy(col, np.int64)
        lengths_parts.append(lengths)
        value_parts.append(values)
        if any_weighted:
            if name in layout.weighted:
                weight_parts.append(_list_parts(table.column(weight_column(name)))[1].astype(np.float32))
            else:
                weight_parts.append(np.ones(len(values), np.float32))
    kjt = KeyedJaggedTensor(
        keys=list(layout.sparse),
        values=torch.from_numpy(np.concatenate(value_parts) if value_parts else np.zeros(0, np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths_parts) if lengths_parts else np.zeros(0, np.int32)),
        weights=torch.from_numpy(np.concatenate(weight_parts)) if any_weighted else None,
    )
    probs = None
    if layout.with_probs and PROB_COLUMN in table.column_names:
        probs = torch.from_numpy(_numpy(table.column(PROB_COLUMN), np.float32).copy())
    return Batch(torch.from_numpy(np.ascontiguousarray(dense)), kjt, labels, probs)


class ParquetBatchReader:
    """Iterate one split of a dataset folder as ``Batch`` objects.

    Files are read one at a time (bounded memory), projected to the layout's columns. With
    ``shuffle``, file order and rows within each file are permuted by a generator seeded with
    ``(seed, epoch)``, so a run is reproducible. ``shard=(rank, world)`` keeps every
    ``world``-th batch for data-parallel readers.
    """

    def __init__(
        self,
        folder: str | Path | StoragePath,
        split: str,
        layout: BatchLayout,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_rows: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.folder = location(folder)
        self.spec = load_dataset_spec(self.folder)
        if split not in self.spec.splits:
            raise KeyError(f"{self.folder}: no split '{split}'; splits: {', '.join(self.spec.splits)}")
        self.split = split
        self.files = [self.folder / f for f in self.spec.splits[split].files]
        self.layout = layout
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.max_rows = max_rows
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_rows(self) -> int:
        rows = self.spec.splits[self.split].rows
        return min(rows, self.max_rows) if self.max_rows is not None else rows

    def __len__(self) -> int:
        n = self.num_rows
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        rank, world = self.shard
        return len(range(rank, full, world))

    def _tables(self, rng: np.random.Generator | None) -> Iterator[pa.Table]:
        order = rng.permutation(len(self.files)) if rng is not None else range(len(self.files))
        remaining = self.max_rows
        for i in order:
            table = read_parquet(self.files[i], columns=self.layout.columns())
            if remaining is not None:
                table = table.slice(0, remaining)
                remaining -= table.num_rows
            if rng is not None:
                table = table.take(pa.array(rng.permutation(table.num_rows)))
            yield table
            if remaining is not None and remaining <= 0:
                return

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        rank, world = self.shard
        carry: pa.Table | None = None
        index = 0
        for table in self._tables(rng):
            if carry is not None and carry.num_rows:
                table = pa.concat_tables([carry, table])
            start = 0
            while table.num_rows - start >= self.batch_size:
                if index % world == rank:
                    yield table_to_batch(table.slice(start, self.batch_size), self.layout)
                index += 1
                start += self.batch_size
            carry = table.slice(start)
        if carry is not None and carry.num_rows and not self.drop_last:
            if index % world == rank:
                yield table_to_batch(carry, self.layout)
