"""Ray Train workers' input: each rank streams its own rows of a split straight from Parquet.

The driver plans a split once (``plan_split``): its Parquet row groups, read from the files'
footers through ``recsys.storage`` (a path or any ``pyarrow.fs`` URI), cut to ``data.max_*_rows``
in file order, and for ``train`` put in a seeded order. Rank ``r`` of ``W`` owns the contiguous
row range ``[n·r/W, n·(r+1)/W)`` of that order (``rank_slices``): disjoint, reproducible, and
for ``train`` trimmed to ``W·⌊n/W⌋`` rows so every rank runs the same number of steps (DMP's
collectives need that). ``ShardReader`` reads its slices one row group at a time with pyarrow
and turns them into batches with the project's collate function ``table_to_batch``; a train
shard's slices are visited in a seeded order every epoch and rows are shuffled inside a window.
Evaluation shards are cut into the same number of batches on every rank (sizes differ by at most
one row), so no row of the split is dropped.

Memory is one row group plus the shuffle window per worker, whatever the dataset's size, and
nothing passes through Ray's object store (Ray Data's ``split_at_indices`` materialised the
split there; its ``streaming_split`` would not, but is not reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from recsys.data.batch import Batch, BatchLayout, table_to_batch
from recsys.features import DatasetSpec
from recsys.storage import Location, StoragePath, location, parquet_file

SHUFFLE_WINDOW_BATCHES = 32  # rows permuted together = this × batch size


class Piece(NamedTuple):
    """Rows ``[offset, offset + rows)`` of row group ``row_group`` of a split's file ``file``."""

    file: str
    row_group: int
    offset: int
    rows: int


def split_rows(spec: DatasetSpec, split: str, max_rows: int | None) -> int:
    """Rows of ``split`` that a run uses."""
    rows = spec.splits[split].rows
    return min(rows, max_rows) if max_rows is not None else rows


def shard_bounds(rows: int, world: int, equal: bool) -> list[int]:
    """Row offsets ``[b_0=0, b_1, ..., b_W]`` of the ranks' contiguous ranges."""
    total = rows - rows % world if equal else rows
    return [total * r // world for r in range(world + 1)]


def plan_split(folder: str | Path | StoragePath, spec: DatasetSpec, split: str, max_rows: int | None, seed: int | None) -> list[Piece]:
    """The row groups a run reads of ``split`` (the first ``max_rows`` rows in file order), in a
    seeded order when ``seed`` is given; refuses files whose row count disagrees with ``dataset.json``."""
    root = location(folder)
    pieces: list[Piece] = []
    for name in spec.splits[split].files:
        meta = parquet_file(root / name).metadata
        pieces += [Piece(name, g, 0, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    held = sum(p.rows for p in pieces)
    if held != spec.splits[split].rows:
        raise ValueError(f"{root}: split '{split}': dataset.json says {spec.splits[split].rows} rows, its Parquet files hold {held}")
    want, kept = split_rows(spec, split, max_rows), []
    for p in pieces:
        if want <= 0:
            break
        kept.append(p._replace(rows=min(p.rows, want)))
        want -= kept[-1].rows
    if seed is not None:
        kept = [kept[i] for i in np.random.default_rng(seed).permutation(len(kept))]
    return [p for p in kept if p.rows]


def rank_slices(pieces: list[Piece], rank: int, world: int, equal: bool) -> list[Piece]:
    """Rank ``rank``'s contiguous rows ``[b_r, b_{r+1})`` of ``pieces`` (see ``shard_bounds``)."""
    bounds = shard_bounds(sum(p.rows for p in pieces), world, equal)
    lo, hi = bounds[rank], bounds[rank + 1]
    out, start = [], 0
    for p in pieces:
        a, b = max(lo, start), min(hi, start + p.rows)
        if a < b:
            out.append(p._replace(offset=p.offset + a - start, rows=b - a))
        start += p.rows
    return out


class ShardReader:
    """One worker's shard of a split as ``Batch`` objects (the loop's ``Reader`` protocol).

    Train shards yield ``batch_size`` batches (the last one partial): slices in an order and
    rows inside windows of ``SHUFFLE_WINDOW_BATCHES`` batches permuted by a generator seeded
    with ``(seed, epoch, rank)``. Eval shards yield exactly ``⌈⌈n/W⌉ / batch_size⌉`` batches on
    every rank, in file order.
    """

    def __init__(
        self,
        folder: str | Path | StoragePath,
        pieces: list[Piece],
        layout: BatchLayout,
        batch_size: int,
        rank: int,
        world: int,
        train: bool,
        seed: int = 0,
    ) -> None:
        self.folder: Location = location(folder)
        self.layout = layout
        self.train = train
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        rows = sum(p.rows for p in pieces)
        self.slices = rank_slices(pieces, rank, world, equal=train)
        self.rows = sum(p.rows for p in self.slices)
        if train:
            full, rest = divmod(self.rows, batch_size)
            self.sizes = [batch_size] * full + ([rest] if rest else [])
        else:
            count = max(1, math.ceil(math.ceil(rows / world) / batch_size))
            cuts = [self.rows * i // count for i in range(count + 1)]
            self.sizes = [b - a for a, b in zip(cuts, cuts[1:])]
        self.window = batch_size * SHUFFLE_WINDOW_BATCHES

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sizes)

    def _tables(self, rng: np.random.Generator | None) -> Iterator[pa.Table]:
        order = rng.permutation(len(self.slices)) if rng is not None else range(len(self.slices))
        columns = self.layout.columns()
        opened: tuple[str, Any] | None = None
        for i in order:
            s = self.slices[i]
            if opened is None or opened[0] != s.file:
                opened = (s.file, parquet_file(self.folder / s.file))
            yield opened[1].read_row_group(s.row_group, columns=columns).slice(s.offset, s.rows)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank]) if self.train else None
        sizes = iter(self.sizes)
        need = next(sizes, None)
        buffer: list[pa.Table] = []
        held = 0
        source = self._tables(rng)
        exhausted = False
        while need is not None:
            if not exhausted and (held < need or (rng is not None and held < self.window)):
                table = next(source, None)
                if table is None:
                    exhausted = True
                else:
                    buffer.append(table)
                    held += table.num_rows
                continue
            if held < need:
                raise RuntimeError(f"rank {self.rank}: shard ended {need - held} rows short of its planned batches")
            data = pa.concat_tables(buffer) if len(buffer) != 1 else buffer[0]
            if rng is not None:
                data = data.take(pa.array(rng.permutation(data.num_rows)))
            start = 0
            while need is not None and data.num_rows - start >= need:
                yield table_to_batch(data.slice(start, need), self.layout)
                start += need
                need = next(sizes, None)
            buffer = [data.slice(start)]
            held = data.num_rows - start
