"""The staged (raw id) Arrow stream between the passes, and the final Parquet parts.

Pass 1 keeps each split's rows, with raw ids only, in memory, or past a memory budget in an
uncompressed Arrow IPC stream per split; pass 2 reads them back batch by batch, adds
vocabulary indices and writes Parquet parts of ``rows_per_file`` rows.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.fieldaware import staged_field_columns
from recsys.data.formats import ParsedChunk, SparseSource
from recsys.data.parse import SparseValues
from recsys.data.splitting import SPLITS, assign_splits  # noqa: F401 - assign_splits re-exported
from recsys.data.vocab import Vocabulary
from recsys.features import LABEL_COLUMN, id_column, weight_column

PARQUET_COMPRESSION = "snappy"
DICTIONARY_MAX_CARDINALITY = 100_000
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)  # lz4 cost more CPU than the disk it saved
STAGE_MEMORY_BYTES = 512 << 20  # staged rows held in memory up to this; past it they spill to disk


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, value_type))


def staged_schema(dense: Sequence[str], sparse: Sequence[SparseSource], raw_dense: Sequence[str] = ()) -> pa.Schema:
    """Columns of the staged stream: label, dense (``raw_dense``: untransformed float64), raw ids (and weights)."""
    fields = [pa.field(LABEL_COLUMN, pa.float32())]
    fields += [pa.field(n, pa.float64() if n in raw_dense else pa.float32()) for n in dense]
    for src in sparse:
        if src.kind == "fields":
            fields += staged_field_columns(src.name)
            continue
        fields.append(pa.field(id_column(src.name), pa.list_(pa.int64()) if src.multi_valued else pa.int64()))
        if src.weighted:
            fields.append(pa.field(weight_column(src.name), pa.list_(pa.float32())))
    return pa.schema(fields)


def _sparse_arrays(values: SparseValues, src: SparseSource) -> list[pa.Array]:
    if values.offsets is None:
        return [pa.array(values.ids, pa.int64())]
    arrays = [_list_array(values.offsets, values.ids, pa.int64())]
    if src.weighted and values.weights is not None:
        arrays.append(_list_array(values.offsets, values.weights, pa.float32()))
    if src.kind == "fields" and values.fields is not None:
        arrays.append(_list_array(values.offsets, values.fields, pa.int32()))
    return arrays


def staged_batch(chunk: ParsedChunk, schema: pa.Schema, sparse: Sequence[SparseSource]) -> pa.RecordBatch:
    """A parsed chunk as a record batch of the staged schema."""
    arrays: list[pa.Array] = [pa.array(chunk.label, pa.float32())]
    arrays += [pa.array(d, schema.field(i + 1).type) for i, d in enumerate(chunk.dense)]
    for values, src in zip(chunk.sparse, sparse):
        arrays += _sparse_arrays(values, src)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class StageWriter:
    """Each split's staged rows, with row and click counts.

    The rows stay in memory until they pass ``memory_budget`` bytes; then they, and every later
    batch, go to one uncompressed Arrow stream per split in ``folder`` (a conversion of 1M Criteo
    rows stages about 270 MB: held, it saves writing and reading them back). ``None``: ``STAGE_MEMORY_BYTES``.
    """

    def __init__(self, folder: Path, schema: pa.Schema, memory_budget: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = {s: folder / f"{s}.arrows" for s in SPLITS}
        self.schema = schema
        self.memory_budget = STAGE_MEMORY_BYTES if memory_budget is None else memory_budget
        self._held: dict[str, deque[pa.RecordBatch]] = {s: deque() for s in SPLITS}
        self._held_bytes = 0
        self._writers: dict[str, pa.ipc.RecordBatchStreamWriter] | None = None
        self.rows = dict.fromkeys(SPLITS, 0)
        self.clicks = dict.fromkeys(SPLITS, 0.0)

    @property
    def spilled(self) -> bool:
        """Whether the rows went to the stream files (past the memory budget)."""
        return self._writers is not None

    def write(self, batch: pa.RecordBatch | pa.Table, splits: np.ndarray) -> None:
        """Append each row of ``batch`` (a table: its batches as one) to its split (``splits``: 0, 1, 2)."""
        order = np.argsort(splits, kind="stable")
        sizes = np.bincount(splits, minlength=len(SPLITS))
        start = 0
        for split, size in zip(SPLITS, sizes.tolist()):
            if size:  # a compact batch of its own, not a slice: list columns' values hold only its rows
                part = batch.take(pa.array(order[start : start + size]))
                if isinstance(part, pa.Table):  # one chunk per column after take
                    part = part.combine_chunks().to_batches()[0]
                if self._writers is not None:
                    self._writers[split].write_batch(part)
                else:
                    self._held[split].append(part)
                    self._held_bytes += part.nbytes
                self.rows[split] += size
                self.clicks[split] += float(np.sum(part.column(0).to_numpy()))
            start += size
        if self._writers is None and self._held_bytes > self.memory_budget:
            self._spill()

    def _spill(self) -> None:
        self._writers = {s: pa.ipc.new_stream(str(p), self.schema, options=_IPC_OPTIONS) for s, p in self.paths.items()}
        for split, held in self._held.items():
            while held:
                self._writers[split].write_batch(held.popleft())
        self._held_bytes = 0

    def close(self) -> None:
        """Finish writing (the staged rows can be read from now on)."""
        if self._writers is not None:
            for writer in self._writers.values():
                writer.close()

    def batches(self, split: str) -> Iterator[pa.RecordBatch]:
        """The rows of ``split`` in order, one staged batch at a time; each is released once read."""
        if self._writers is not None:
            yield from read_staged(self.paths[split])
            return
        held = self._held[split]
        while held:
            yield held.popleft()

    def release(self, split: str) -> None:
        """Drop what is left of ``split`` (its stream file too)."""
        self._held[split].clear()
        self.paths[split].unlink(missing_ok=True)


def read_staged(path: Path) -> Iterator[pa.RecordBatch]:
    """Batches of a staged stream, one at a time."""
    with pa.ipc.open_stream(pa.OSFile(str(path))) as reader:
        yield from reader


def final_schema(dense: Sequence[str], sparse: Sequence[SparseSource]) -> pa.Schema:
    """Columns of the Parquet parts (see ``recsys.features``)."""
    fields = [pa.field(LABEL_COLUMN, pa.float32())] + [pa.field(n, pa.float32()) for n in dense]
    for src in sparse:
        kind = pa.list_(pa.int64()) if src.multi_valued else pa.int64()
        fields += [pa.field(src.name, kind), pa.field(id_column(src.name), kind)]
        if src.weighted:
            fields.append(pa.field(weight_column(src.name), pa.list_(pa.float32())))
    return pa.schema(fields)


def final_table(
    batch: pa.RecordBatch,
    schema: pa.Schema,
    dense: Sequence[str],
    sparse: Sequence[SparseSource],
    vocabs: Sequence[Vocabulary],
) -> pa.Table:
    """A staged batch with vocabulary indices added, in the final column order."""
    arrays: list[pa.Array] = [batch.column(LABEL_COLUMN)] + [batch.column(n) for n in dense]
    for src, vocab in zip(sparse, vocabs):
        ids = batch.column(id_column(src.name))
        if src.multi_valued:
            flat = ids.values.to_numpy()
            index = pa.ListArray.from_arrays(ids.offsets, pa.array(vocab.lookup(flat), pa.int64()))
        else:
            index = pa.array(vocab.lookup(ids.to_numpy()), pa.int64())
        arrays += [index, ids]
        if src.weighted:
            arrays.append(batch.column(weight_column(src.name)))
    return pa.Table.from_arrays(arrays, schema=schema)


def dictionary_columns(dense: Sequence[str], sparse: Sequence[SparseSource], vocabs: Sequence[Vocabulary]) -> list[str]:
    """Columns worth Parquet dictionary encoding: label, dense, and sparse fields of few values."""
    columns = [LABEL_COLUMN, *dense]
    for src, vocab in zip(sparse, vocabs):
        if vocab.cardinality <= DICTIONARY_MAX_CARDINALITY:
            columns.append(src.name)
        if vocab.num_distinct <= DICTIONARY_MAX_CARDINALITY:
            columns.append(id_column(src.name))
    return columns


class PartWriter:
    """Parquet parts ``<split>/part-XXXXX.parquet`` of at most ``rows_per_file`` rows."""

    def __init__(
        self,
        root: Path,
        split: str,
        schema: pa.Schema,
        rows_per_file: int,
        row_group_rows: int,
        dictionary_columns: list[str],
    ) -> None:
        self.root = root
        self.dictionary_columns = dictionary_columns
        self.split = split
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.row_group_rows = row_group_rows
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        (root / split).mkdir(parents=True, exist_ok=True)

    def _open(self) -> None:
        name = f"{self.split}/part-{len(self.files):05d}.parquet"
        self.files.append(name)
        stats = [c for c in self.schema.names if not c.endswith(("__id", "__w"))]  # min/max of hashes tell nothing
        self._writer = pq.ParquetWriter(
            str(self.root / name),
            self.schema,
            compression=PARQUET_COMPRESSION,
            use_dictionary=self.dictionary_columns,
            write_statistics=stats,
        )
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        """Append rows; small tables are gathered into row groups of ``row_group_rows``."""
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._rows_in_file >= self.rows_per_file:
                self.close_file()
                self._open()
            take = min(self.rows_per_file - self._rows_in_file, table.num_rows - start)
            assert self._writer is not None
            self._writer.write_table(table.slice(start, take))
            self._rows_in_file += take
            start += take

    def close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[str]:
        """Finish; an empty split still gets one (empty) part, so its schema is readable."""
        self._flush()
        if not self.files:
            self._open()
        self.close_file()
        return self.files
