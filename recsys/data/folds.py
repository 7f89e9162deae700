"""K-fold cross-validation datasets from one dataset's train and valid rows.

Fold ``i`` of ``k`` is a complete dataset folder whose valid split is the ``i``-th of ``k`` seeded,
equal-sized random parts of train ∪ valid (the first ``max_train_rows`` train rows and the first
``max_valid_rows`` valid rows, where given) and whose train split is the rest, in their original order. Fields, vocabularies
(indices are already in the Parquet, so every fold reads the same ids) and the test split are the
source's. The vocabulary and its counts were made from the source's train rows: in a fold, values
of the held-out part count as seen, which is what a model selection between methods on the same
folds can share (both see the same rows). Meant for small sets, where one valid split is too
few rows to tell methods apart (``recsys tune --confirm-folds``); the rows are read into memory.

Example:
    >>> write_folds(Path("data/small"), 5, seed=0, out=Path("folds"))  # doctest: +SKIP
    [PosixPath('folds/fold0'), ..., PosixPath('folds/fold4')]
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features import DATASET_FILE, LABEL_COLUMN, PROB_COLUMN, DatasetSpec, OracleMetrics, SplitSpec, load_dataset_spec
from recsys.metrics import auc, logloss

FOLDS_FILE = "folds.json"  # what a fold folder was made from (a matching one is reused)
PART = "part-00000.parquet"


def fold_parts(rows: int, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each of ``rows`` rows: a seeded permutation dealt round-robin, so the
    parts differ in size by at most one row."""
    if k < 2:
        raise ValueError(f"folds: k={k}; cross-validation needs at least 2 folds")
    if rows < k:
        raise ValueError(f"folds: {rows} train+valid rows cannot make {k} folds")
    parts = np.empty(rows, np.int64)
    parts[np.random.default_rng(seed).permutation(rows)] = np.arange(rows) % k
    return parts


def _read_split(root: Path, spec: DatasetSpec, split: str, max_rows: int | None) -> pa.Table:
    tables = [pq.read_table(root / f) for f in spec.splits[split].files]
    table = pa.concat_tables(tables) if tables else pa.table({})
    return table.slice(0, max_rows) if max_rows is not None else table


def _split_spec(table: pa.Table, name: str) -> SplitSpec:
    labels = table.column(LABEL_COLUMN).to_numpy().astype(np.float64)
    oracle = None
    if PROB_COLUMN in table.column_names and 0 < labels.sum() < len(labels):
        p = table.column(PROB_COLUMN).to_numpy().astype(np.float64)
        oracle = OracleMetrics(auc=auc(labels, p), logloss=logloss(labels, p))
    return SplitSpec(rows=table.num_rows, files=[f"{name}/{PART}"], label_rate=float(labels.mean()), oracle=oracle)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _record(dataset: Path, spec: DatasetSpec, k: int, seed: int, rows: tuple[int | None, int | None]) -> dict:
    stamp = {f: (dataset / f).stat().st_mtime_ns for s in ("train", "valid") for f in spec.splits[s].files}
    return {"source": str(dataset.resolve()), "k": k, "seed": seed, "max_train_rows": rows[0], "max_valid_rows": rows[1], "source_files": stamp}


def write_folds(dataset: Path, k: int, seed: int, out: Path, max_train_rows: int | None = None, max_valid_rows: int | None = None) -> list[Path]:
    """Write (or reuse, when made from the same rows and settings) ``out/fold0 .. fold{k-1}``; returns them.

    Each folder is built beside its place and renamed into it when complete, so an interrupted
    run leaves no fold that looks finished."""
    dataset = Path(dataset)
    spec = load_dataset_spec(dataset)
    record = _record(dataset, spec, k, seed, (max_train_rows, max_valid_rows))
    folders = [Path(out) / f"fold{i}" for i in range(k)]
    if all(_read_record(f) == record for f in folders):
        return folders
    rows = pa.concat_tables(
        [_read_split(dataset, spec, "train", max_train_rows), _read_split(dataset, spec, "valid", max_valid_rows)], promote_options="default"
    )
    parts = fold_parts(rows.num_rows, k, seed)
    for i, folder in enumerate(folders):
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        held = parts == i
        splits = {"train": rows.filter(pa.array(~held)), "valid": rows.filter(pa.array(held))}
        for name, table in splits.items():
            (tmp / name).mkdir(parents=True)
            pq.write_table(table, tmp / name / PART)
        for f in (*spec.splits["test"].files, *(x.vocabulary for x in spec.sparse_fields if x.vocabulary)):
            _link_or_copy(dataset / f, tmp / f)
        fold_spec = spec.model_copy(
            update={"name": f"{spec.name}_fold{i}", "splits": {**spec.splits, **{n: _split_spec(t, n) for n, t in splits.items()}}}
        )
        (tmp / FOLDS_FILE).write_text(json.dumps(record | {"fold": i}, indent=1))
        (tmp / DATASET_FILE).write_text(fold_spec.model_dump_json(indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folders


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / FOLDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (folder / DATASET_FILE).exists():
        return None
    record.pop("fold", None)
    return record
