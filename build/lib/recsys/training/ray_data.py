"""Ray Data input for Ray Train workers: a deterministic split and a reader of ``Batch`` objects.

The driver builds one ``read_parquet`` dataset per split, projected to the layout's columns.
``EqualSplit`` (a ``DataConfig``) gives rank ``r`` of ``W`` the contiguous row range
``[n·r/W, n·(r+1)/W)`` of the (seeded) block order: disjoint, reproducible, and for ``train``
trimmed to ``W·⌊n/W⌋`` rows so every rank runs the same number of steps (DMP's collectives need
that). ``RayShardReader`` turns a worker's shard into batches with the project's collate
function ``table_to_batch``, shuffling rows inside a seeded window every epoch. Evaluation
shards are cut into the same number of batches on every rank (sizes differ by at most one row),
so no row of the split is dropped.

The split materialises the projected columns in Ray's object store (spilled to disk when it
is full); Ray's dynamic ``streaming_split`` would avoid that but is not reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from recsys.data.batch import Batch, BatchLayout, table_to_batch
from recsys.features import DatasetSpec
from recsys.storage import arrow_filesystem, location

SHUFFLE_WINDOW_BATCHES = 32  # rows permuted together = this × batch size


def split_rows(spec: DatasetSpec, split: str, max_rows: int | None) -> int:
    """Rows of ``split`` that a run uses."""
    rows = spec.splits[split].rows
    return min(rows, max_rows) if max_rows is not None else rows


def shard_bounds(rows: int, world: int, equal: bool) -> list[int]:
    """Row offsets ``[b_0=0, b_1, ..., b_W]`` of the ranks' contiguous ranges."""
    total = rows - rows % world if equal else rows
    return [total * r // world for r in range(world + 1)]


def read_split(folder: str | Path, spec: DatasetSpec, split: str, layout: BatchLayout, max_rows: int | None) -> Any:
    """A lazy Ray dataset of one split, projected to the layout's columns; ``folder`` is a path
    or a URI (read through its ``pyarrow.fs`` filesystem)."""
    import ray.data

    root = location(folder)
    if isinstance(root, Path):
        ds = ray.data.read_parquet([str(root / f) for f in spec.splits[split].files])
    else:
        fs, base = arrow_filesystem(root)
        ds = ray.data.read_parquet([f"{base}/{f}" for f in spec.splits[split].files], filesystem=fs)
    ds = ds.select_columns(layout.columns())
    return ds.limit(max_rows) if max_rows is not None else ds


def make_data_config(rows: dict[str, int], equal: set[str], seed: int) -> Any:
    """An ``EqualSplit`` data config (built here so that importing this module needs no Ray)."""
    from ray.train import DataConfig

    class EqualSplit(DataConfig):
        """Seeded block order, then contiguous row ranges per rank (see the module docstring)."""

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # type: ignore[no-untyped-def]
            output: list[dict[str, Any]] = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.randomize_block_order(seed=seed).materialize()
                if ds.count() != rows[name]:
                    raise ValueError(f"split '{name}': dataset.json says {rows[name]} rows, Parquet files hold {ds.count()}")
                bounds = shard_bounds(rows[name], world_size, name in equal)
                parts = ds.split_at_indices(bounds[1:])
                for rank in range(world_size):
                    output[rank][name] = parts[rank].iterator()
            return output

    return EqualSplit()


class RayShardReader:
    """One worker's shard of a split as ``Batch`` objects (the loop's ``Reader`` protocol).

    Train shards yield ``batch_size`` batches (the last one partial), shuffled inside windows
    of ``SHUFFLE_WINDOW_BATCHES`` batches by a generator seeded with ``(seed, epoch, rank)``.
    Eval shards yield exactly ``⌈⌈n/W⌉ / batch_size⌉`` batches on every rank.
    """

    def __init__(
        self, iterator: Any, layout: BatchLayout, batch_size: int, rows: int, rank: int, world: int,
        train: bool, seed: int = 0,
    ) -> None:
        self.iterator = iterator
        self.layout = layout
        self.train = train
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        bounds = shard_bounds(rows, world, equal=train)
        self.rows = bounds[rank + 1] - bounds[rank]
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

    def _tables(self) -> Iterator[pa.Table]:
        for table in self.iterator.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            yield table

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank]) if self.train else None
        sizes = iter(self.sizes)
        need = next(sizes, None)
        buffer: list[pa.Table] = []
        held = 0
        source = self._tables()
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
