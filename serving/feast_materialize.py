"""``recsys feast materialize``: write raw values' vectors into the online store a Feast repo names.

The values come from a file with columns ``feature`` and ``value`` (CSV or Parquet, e.g. the
distinct values of your logs; the artifact keeps only hashed ids, not raw values). For vocabulary
methods only values in the vocabulary are written (the others would all get the OOV row; they are
counted as skipped); for hashing methods every value is. The file is checked completely first
(unknown feature, empty value, a field without a feature view: an error naming the file and row,
nothing written), then read and written in batches of ``batch_size`` rows (bounded memory) through
``FeatureStore.write_to_online_store``, so any Feast online store works (sqlite, Redis, ...).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from feast import FeatureStore
from tqdm import tqdm

from recsys.features import OOV_INDEX
from recsys.serving.feast_store import FEATURE_SUFFIX, STORE_TYPE, check_view, view_field
from recsys.serving.store import Store

COLUMNS = ("feature", "value")


class ValuesFileError(ValueError):
    """A values file that cannot be materialized (names the file, the row and what is wrong)."""


@dataclass
class MaterializeReport:
    """What was written: rows per field, values skipped as out of vocabulary."""

    written: dict[str, int] = field(default_factory=dict)
    skipped_oov: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.written.values())


def read_values(path: Path, batch_size: int) -> Iterator[tuple[int, list[str | None], list[str | None]]]:
    """``(first row, features, values)`` batches of a ``feature,value`` CSV or Parquet file (rows count from 1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such values file")
    if path.suffix == ".parquet":
        names = pq.ParquetFile(path).schema_arrow.names
        _check_columns(path, names)
        batches: Iterator[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(batch_size, columns=list(COLUMNS))
    else:
        with open(path, encoding="utf-8", newline="") as f:
            _check_columns(path, next(csv.reader(f), []))
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS}, include_columns=list(COLUMNS), strings_can_be_null=False)
        batches = pacsv.open_csv(path, convert_options=convert)
    row = 1
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            part = batch.slice(start, batch_size)
            yield row, part.column(0).cast(pa.string()).to_pylist(), part.column(1).cast(pa.string()).to_pylist()
            row += part.num_rows


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValuesFileError(f"{path}: missing column(s) {missing}; a values file has columns 'feature' and 'value' (got {names})")


def _check_rows(path: Path, batch_size: int, fields: set[str]) -> int:
    """Rows of the file, after checking every row (unknown field, empty value)."""
    rows = 0
    for first, features, values in read_values(path, batch_size):
        for i, (f, v) in enumerate(zip(features, values)):
            if f not in fields:
                raise ValuesFileError(f"{path}: row {first + i}: feature {f!r} has no feature view in the repo; fields: {', '.join(sorted(fields))}")
            if not v:
                raise ValuesFileError(f"{path}: row {first + i}: feature {f!r} has an empty value (the missing value is not materialized)")
        rows += len(features)
    return rows


def repo_views(fs: FeatureStore, store: Store) -> dict[str, str]:
    """Field -> feature view name of a repo's views, each checked against the artifact."""
    if fs.config.online_store.type == STORE_TYPE:
        raise ValueError(
            f"{fs.repo_path}: the repo's online store is RecsysOnlineStore itself, which answers from the "
            "artifact; materialize into a repo made with `recsys feast init --online-store sqlite|redis`"
        )
    views = {}
    for view in fs.list_feature_views():
        if view_field(view) in store.widths:
            views[check_view(view, store)] = view.name
    return views


def materialize(store: Store, repo: Path, values: Path, batch_size: int = 10_000, progress: bool = True) -> MaterializeReport:
    """Write the vectors of the values in ``values`` into ``repo``'s online store; see the module docstring."""
    fs = FeatureStore(repo_path=str(repo))
    views = repo_views(fs, store)
    total = _check_rows(values, batch_size, set(views))
    vocab = store.encoder.vocabularies
    report = MaterializeReport({f: 0 for f in views}, {f: 0 for f in views})
    now = pd.Timestamp(datetime.now(timezone.utc))
    with tqdm(total=total, unit="value", disable=not progress, desc="materialize") as bar:
        for _, features, vals in read_values(values, batch_size):
            by_field: dict[str, list[str]] = {}
            for f, v in zip(features, vals):
                by_field.setdefault(f, []).append(v)  # type: ignore[arg-type]
            for name, items in by_field.items():
                pairs = [(name, v) for v in items]
                if vocab is not None:
                    position, ids = store.encoder.raw_pairs(pairs)
                    known = vocab.lookup_present(position, ids) != OOV_INDEX
                    report.skipped_oov[name] += int((~known).sum())
                    pairs = [p for p, k in zip(pairs, known) if k]
                if pairs:
                    vectors = store.embeddings(pairs)[:, : store.widths[name]]
                    df = pd.DataFrame(
                        {name: [v for _, v in pairs], name + FEATURE_SUFFIX: list(np.ascontiguousarray(vectors)), "event_timestamp": now}
                    )
                    fs.write_to_online_store(views[name], df)
                    report.written[name] += len(pairs)
            bar.update(len(features))
    return report
