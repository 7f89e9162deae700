"""Streaming reader of Parquet (or Arrow-written) input files, by record batches.

Rows are numbered from 1 within each file, so errors can name the row and its row group;
only the columns a schema uses are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.errors import ConversionError
from recsys.data.textreader import LineChunk


def open_parquet(path: Path) -> pq.ParquetFile:
    """``path`` as a Parquet file, or a ``ConversionError`` saying why it is not one."""
    try:
        return pq.ParquetFile(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise ConversionError(path, f"cannot read as Parquet: {exc}") from exc


def parquet_schema(path: Path) -> pa.Schema:
    """The Arrow schema of a Parquet file."""
    return open_parquet(path).schema_arrow


def row_group_starts(path: Path) -> np.ndarray:
    """First row (1-based) of each row group."""
    meta = open_parquet(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.ones(1, np.int64)


def parquet_rows(path: Path) -> int:
    return open_parquet(path).metadata.num_rows


def read_parquet_chunks(path: Path, columns: Sequence[str], chunk_rows: int) -> Iterator[LineChunk]:
    """Chunks of about ``chunk_rows`` rows of ``columns``, with their 1-based row numbers."""
    file = open_parquet(path)
    start = 1
    try:
        for batch in file.iter_batches(batch_size=chunk_rows, columns=list(columns), use_threads=True):
            table = pa.Table.from_batches([batch])
            lines = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            yield LineChunk(table, lines, [])
    except (OSError, pa.ArrowException) as exc:
        group = int(np.searchsorted(row_group_starts(path), start, side="right")) - 1
        raise ConversionError(path, f"cannot read: {exc}", row_group=group) from exc
    finally:
        file.close()
