"""Streaming conversion of click logs (Criteo, Avazu, libFM, schema-described CSV or Parquet) to a dataset folder.

Inputs are one file or many (globs, read in order; gzip/bz2/zstd by extension), or files
already split (``presplit``). Two passes with bounded memory (besides the vocabularies):

1. parse the raw files in chunks (pyarrow's C++ CSV reader, or Parquet record batches),
   check values vectorised, assign each row a split (``recsys.data.splitting``: seeded random,
   by order, by time, or given), hash categorical values to raw ids
   (``recsys.hashing.hash64_strings``), count train frequencies per field, and stage the rows
   (raw ids only) per split;
2. build vocabularies (``count >= min_count``; by decreasing count, then id), then read the
   staged rows back, add vocabulary indices and write the Parquet parts and ``dataset.json``.

Everything is written to a hidden sibling folder that is renamed to ``out_dir`` at the end;
on failure it is removed and ``out_dir`` is untouched. Such folders left by a killed conversion
are removed by the next one (``recsys.data.tmpdirs``).

Example:
    >>> spec = convert("criteo", Path("train.txt"), Path("data/criteo"), min_count=10)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from recsys.data.allocator import held_memory, jemalloc_pool, trim
from recsys.data.background import Background
from recsys.data.errors import BadRowLog, BadRowMode, ConversionError
from recsys.data.fieldaware import FieldCounters
from recsys.data.finish import VOCAB_DIR, OutputLayout, field_specs, output_layout
from recsys.data.formats import InputFormat, LibfmFields, ParsedChunk, SparseSource, check_file, open_format
from recsys.data.parquet_reader import read_parquet_chunks, row_group_starts
from recsys.data.parse import SparseValues
from recsys.data.plan import InputPaths, Splitter, input_files, split_policy
from recsys.data.splitting import SPLITS, SplitPolicy
from recsys.data.stages import (
    PartWriter,
    StageWriter,
    dictionary_columns,
    final_schema,
    final_table,
    staged_batch,
    staged_schema,
)
from recsys.data.textreader import LineChunk, read_chunks
from recsys.data.tmpdirs import dataset_folder
from recsys.data.transforms import DenseStats
from recsys.data.vocab import CountTable, FrequencyCounter, Vocabulary, new_counter
from recsys.features import NUM_RESERVED, DatasetSpec, IdScheme, SplitSpec, save_dataset_spec

__all__ = ["ConversionError", "SplitPolicy", "convert"]

BLOCK_SIZE = 4 << 20
PARSE_THREADS = 2
PIECES = 4  # a text chunk is checked, hashed and counted in about this many pieces (staged whole)
_STAGE_DIR = "_stage"


def convert(
    fmt: Literal["criteo", "avazu", "libfm", "libffm", "csv", "parquet"],
    input_path: InputPaths | None,
    out_dir: Path,
    *,
    schema_path: Path | None = None,
    min_count: int = 1,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    on_bad_row: BadRowMode = "error",
    seed: int = 0,
    chunk_rows: int = 200_000,
    rows_per_file: int = 1_000_000,
    progress: bool = True,
    overwrite: bool = False,
    presplit: Mapping[str, InputPaths] | None = None,
    split_by: Literal["random", "order", "time"] = "random",
    time_column: str | None = None,
    time_cuts: Sequence[str] | None = None,
    libfm_fields: LibfmFields = "bag",
) -> DatasetSpec:
    """Convert ``input_path`` (a file, a glob, or a list of them) into the dataset folder ``out_dir``.

    Returns its ``dataset.json``. ``presplit`` (``{"train": ..., "valid": ..., "test": ...}``)
    replaces ``input_path`` with files already split. ``split_by`` ``order`` cuts the rows in
    input order by the ``split`` fractions; ``time`` cuts by ``time_column`` at the two
    ``time_cuts``. ``libfm_fields="positional"`` reads each position of a libFM line as its own
    field (format ``libffm`` names the fields in the line). ``overwrite`` replaces an existing
    complete dataset (a folder with ``dataset.json``); any other non-empty ``out_dir`` is refused. Bad rows raise
    ``ConversionError`` (naming file, line or row group and row, and field) or, with
    ``on_bad_row="skip"``, are dropped and counted by reason.
    """
    out_dir = Path(out_dir)
    files = input_files(input_path, presplit)
    first = files[0][0]
    _check_args(first, min_count, split, on_bad_row, chunk_rows, rows_per_file)
    schema = None if schema_path is None else Path(schema_path)
    layout = open_format(fmt, first, schema, libfm_fields)
    for path, _ in files[1:]:
        check_file(layout, path, first, schema)
    policy, layout = split_policy(layout, first, presplit is not None, split_by, split, seed, time_column, time_cuts)
    opts = _Options(min_count, policy, on_bad_row, chunk_rows, rows_per_file, progress)
    with dataset_folder(out_dir, overwrite, ConversionError) as tmp, jemalloc_pool(), held_memory():
        return _build(layout, files, tmp, out_dir.name, opts)


@dataclass(frozen=True)
class _Options:
    """The policy and tuning arguments of ``convert``."""

    min_count: int
    policy: SplitPolicy
    on_bad_row: BadRowMode
    chunk_rows: int
    rows_per_file: int
    progress: bool


def _check_args(path: Path, min_count: int, split: Sequence[float], on_bad_row: str, chunk_rows: int, rows_per_file: int) -> None:
    if min_count < 1:
        raise ConversionError(path, f"min_count must be >= 1, got {min_count}", field="min_count")
    if len(split) != 3 or any(f < 0 for f in split) or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise ConversionError(path, f"split must be 3 fractions >= 0 summing to 1, got {split}", field="split")
    if split[0] <= 0:
        raise ConversionError(path, "the train fraction must be > 0 (vocabularies come from train)", field="split")
    if on_bad_row not in ("error", "skip"):
        raise ConversionError(path, f"on_bad_row must be 'error' or 'skip', got '{on_bad_row}'", field="on_bad_row")
    if chunk_rows < 1 or rows_per_file < 1:
        raise ConversionError(path, "chunk_rows and rows_per_file must be >= 1", field="chunk_rows")


def _build(layout: InputFormat, files: list[tuple[Path, int | None]], root: Path, name: str, opts: _Options) -> DatasetSpec:
    log = BadRowLog(files[0][0], opts.on_bad_row)
    raw_dense = [n for n, t in layout.transforms.items() if t.needs_stats]
    stage = StageWriter(root / _STAGE_DIR, staged_schema(layout.dense, layout.sparse, raw_dense))
    try:
        with Background() as staging:  # the last staged rows are written while the vocabularies are built
            counters, stats, rows = _first_pass(layout, files, stage, staging, log, opts)
            where = files[0][0] if len(files) == 1 else f"{files[0][0]} and {len(files) - 1} more"
            if sum(rows) == 0:
                detail = f" ({log.total} bad rows skipped)" if log.total else ""
                raise ConversionError(where, f"empty input: no data rows{detail}")
            if rows[0] == 0:
                raise ConversionError(where, "no rows in the train split (vocabularies come from train); check the split")
            out = output_layout(layout, counters, stats)
            counted = [s for s in out.final.sparse if s.kind != "bucket"]
            trim()
            vocabs = _build_vocabularies(counted, out.counters, root, opts.min_count) + out.bucket_vocabularies()
    finally:
        stage.close()
    trim()
    splits = _second_pass(out, stage, vocabs, root, opts)
    for src, vocab in zip(out.final.sparse[len(counted) :], vocabs[len(counted) :]):
        vocab.write(root / VOCAB_DIR / f"{src.name}.parquet")  # bucket fields: train counts known only now
    shutil.rmtree(root / _STAGE_DIR)
    spec = DatasetSpec(
        name=name,
        source=layout.name,
        fields=field_specs(out, vocabs),
        id_scheme=IdScheme(min_count=opts.min_count),
        splits=splits,
        bad_rows=log.total,
        bad_rows_by_reason=dict(sorted(log.counts.items())),
    )
    save_dataset_spec(spec, root)
    return spec


def _build_vocabularies(sparse: Sequence[SparseSource], counters: list[CountTable], root: Path, min_count: int) -> list[Vocabulary]:
    """Vocabularies from the train counts (each counter is released once used), written to ``vocab/``."""
    (root / VOCAB_DIR).mkdir()

    def build(i: int) -> Vocabulary:
        vocab = Vocabulary.from_counts(*counters[i].result(), min_count)
        counters[i] = FrequencyCounter()
        vocab.write(root / VOCAB_DIR / f"{sparse[i].name}.parquet")
        return vocab

    with ThreadPoolExecutor(PARSE_THREADS) as pool:  # the largest first: the threads end together
        jobs = {i: pool.submit(build, i) for i in sorted(range(len(sparse)), key=lambda i: -len(counters[i]))}
        return [jobs[i].result() for i in range(len(sparse))]


def _chunks(layout: InputFormat, path: Path, chunk_rows: int, on_bytes: Callable[[int], None]) -> Iterator[LineChunk]:
    if layout.text is None:
        return read_parquet_chunks(path, layout.columns, chunk_rows)
    pieces = max(1, chunk_rows // PIECES)
    return read_chunks(path, layout.text, layout.columns, chunk_rows, block_size=BLOCK_SIZE, on_bytes=on_bytes, piece_rows=pieces, fast=layout.fast())


def _first_pass(
    layout: InputFormat, files: list[tuple[Path, int | None]], stage: StageWriter, background: Background, log: BadRowLog, opts: _Options
) -> tuple[list[CountTable | FieldCounters], dict[str, DenseStats], list[int]]:
    """Parse, check, split, count and stage (on ``background``) every row of every file, in order; the rows of each split."""
    counters: list[CountTable | FieldCounters] = [FieldCounters() if src.kind == "fields" else new_counter() for src in layout.sparse]
    stats = {n: DenseStats(n, opts.policy.seed, t.kind == "quantile") for n, t in layout.transforms.items() if t.needs_stats}
    splitter = Splitter(layout, files, opts.policy)
    sizes = [path.stat().st_size for path, _ in files]
    desc = f"read {files[0][0].name}" + (f" +{len(files) - 1} files" if len(files) > 1 else "")
    rows = np.zeros(len(SPLITS), np.int64)
    with (
        tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=desc, disable=not opts.progress, file=sys.stderr) as bar,
        ThreadPoolExecutor(PARSE_THREADS) as pool,
    ):
        done = 0
        for index, (path, role) in enumerate(files):
            log.at(path, row_group_starts(path) if layout.text is None else None)
            size = sizes[index]
            chunks = _chunks(layout, path, opts.chunk_rows, lambda pos: bar.update(max(0, done + min(pos, size) - bar.n)))
            pieces: list[tuple[ParsedChunk, np.ndarray]] = []  # the pieces of the current chunk, staged together
            with contextlib.closing(chunks):  # type: ignore[type-var]
                for chunk in chunks:
                    parsed, issues = layout.parse(chunk.table, chunk.lines, pool)
                    keep = log.resolve(issues, parsed.lines, chunk.ragged)
                    if keep is not None:
                        parsed = parsed.take(keep)
                    if len(parsed):
                        splits = splitter(parsed, index, role)
                        list(pool.map(partial(_count, train=splits == 0), counters, parsed.sparse))  # each counter on one thread
                        pieces.append((parsed, splits))
                        rows += np.bincount(splits, minlength=len(SPLITS))
                    if chunk.ends_chunk and pieces:
                        _stage_chunk(pieces, layout, stats, stage, background)
                        pieces = []
            done += size
            bar.update(max(0, done - bar.n))
    return counters, stats, rows.tolist()


def _stage_chunk(
    pieces: list[tuple[ParsedChunk, np.ndarray]], layout: InputFormat, stats: dict[str, DenseStats], stage: StageWriter, background: Background
) -> None:
    """Add a chunk's train values to the dense statistics and stage its rows (one batch, as if never cut in pieces)."""
    splits = np.concatenate([s for _, s in pieces]) if len(pieces) > 1 else pieces[0][1]
    for i, name in enumerate(layout.dense):
        if name in stats:
            column = np.concatenate([p.dense[i] for p, _ in pieces]) if len(pieces) > 1 else pieces[0][0].dense[i]
            stats[name].add(column[splits == 0])
    batches = [staged_batch(p, stage.schema, layout.sparse) for p, _ in pieces]
    background.submit(stage.write, batches[0] if len(batches) == 1 else pa.Table.from_batches(batches), splits)


def _count(counter: CountTable | FieldCounters, values: SparseValues, train: np.ndarray) -> None:
    """Add one field's train values to its counter."""
    if isinstance(counter, FieldCounters):
        counter.count(values, train)
    else:
        counter.add_values(values, train)


def _second_pass(out: OutputLayout, stage: StageWriter, vocabs: list[Vocabulary], root: Path, opts: _Options) -> dict[str, SplitSpec]:
    """Add vocabulary indices to the staged rows and write the Parquet parts of each split.

    Train (its lookups, and its Parquet writer on a thread of its own: the longest serial work) runs
    beside valid and test (one thread, from the train writer's second table on), so both cores stay
    busy; the train rows' bucket counts fill the bucket fields' vocabularies.
    """
    final = out.final
    buckets = [(src.name, vocab) for src, vocab in zip(final.sparse, vocabs) if src.kind == "bucket"]
    schema = final_schema(final.dense, final.sparse)
    dictionary = dictionary_columns(final.dense, final.sparse, vocabs)
    total = sum(stage.rows.values())
    with tqdm(total=total, unit="row", unit_scale=True, desc="write parquet", disable=not opts.progress, file=sys.stderr) as bar:
        started = threading.Event()  # the train writer has its first row group: valid and test may start

        def tables(split: str) -> Iterator[pa.Table]:
            for batch in stage.batches(split):
                table = final_table(out.finish_batch(batch), schema, final.dense, final.sparse, vocabs)
                for name, vocab in buckets if split == "train" else []:
                    index = table.column(name).to_numpy() - NUM_RESERVED
                    vocab.counts += np.bincount(index[index >= 0], minlength=len(vocab.counts))
                bar.update(batch.num_rows)
                yield table

        def write_train() -> dict[str, list[str]]:
            writer = PartWriter(root, "train", schema, opts.rows_per_file, opts.chunk_rows, dictionary)
            try:
                with Background() as background:  # the writer: the longest serial work of the pass
                    for i, table in enumerate(tables("train")):
                        background.submit(writer.write, table)
                        if i == 1:
                            started.set()
            finally:
                started.set()
            files = {"train": writer.close()}
            stage.release("train")
            return files

        def write_rest() -> dict[str, list[str]]:
            started.wait()
            files = {}
            for split in SPLITS[1:]:  # on this one thread: the train writer keeps a core
                writer = PartWriter(root, split, schema, opts.rows_per_file, opts.chunk_rows, dictionary)
                for table in tables(split):
                    writer.write(table)
                files[split] = writer.close()
                stage.release(split)
            return files

        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(write_train), pool.submit(write_rest)]
            files = {k: v for job in jobs for k, v in job.result().items()}
    return {
        split: SplitSpec(
            rows=stage.rows[split],
            files=files[split],
            label_rate=stage.clicks[split] / stage.rows[split] if stage.rows[split] else 0.0,
        )
        for split in SPLITS
    }
