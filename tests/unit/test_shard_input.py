"""``recsys.training.shard_input``: the driver's plan of a split's row groups and each Ray Train
rank's streamed shard of it (disjoint, equal for train, reproducible, every eval row once)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.batch import BatchLayout
from recsys.features import load_dataset_spec
from recsys.training.shard_input import Piece, ShardReader, plan_split, rank_slices

ROW_GROUP = 700


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A synthetic dataset whose train and valid rows are numbered in ``I1`` and rewritten as
    two files of 700-row row groups."""
    from recsys.data.synthetic import generate

    root = tmp_path_factory.mktemp("shards") / "ds"
    generate(root, rows=6000, profile="small", seed=0, progress=False)
    meta = json.loads((root / "dataset.json").read_text())
    for split in ("train", "valid"):
        (name,) = meta["splits"][split]["files"]
        table = pq.read_table(root / name)
        table = table.set_column(table.schema.get_field_index("I1"), "I1", pa.array(np.arange(table.num_rows, dtype=np.float32)))
        (root / name).unlink()
        half = table.num_rows // 2 + 123
        files = [f"{split}/part-a.parquet", f"{split}/part-b.parquet"]
        pq.write_table(table.slice(0, half), root / files[0], row_group_size=ROW_GROUP)
        pq.write_table(table.slice(half), root / files[1], row_group_size=ROW_GROUP)
        meta["splits"][split]["files"] = files
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _ids(reader: ShardReader) -> list[list[int]]:
    col = reader.layout.dense.index("I1")
    return [b.dense_features[:, col].long().tolist() for b in reader]


def _reader(data: Path, pieces: list[Piece], rank: int, world: int, train: bool, batch: int = 256) -> ShardReader:
    spec = load_dataset_spec(data)
    return ShardReader(data, pieces, BatchLayout.from_spec(spec), batch, rank, world, train=train, seed=7)


def test_the_plan_lists_every_row_group_cuts_to_max_rows_and_orders_train_by_the_seed(data):
    spec = load_dataset_spec(data)
    rows = spec.splits["train"].rows
    plain = plan_split(data, spec, "train", None, None)
    assert [p.file for p in plain] == sorted(p.file for p in plain) and sum(p.rows for p in plain) == rows
    assert max(p.rows for p in plain) == ROW_GROUP and all(p.offset == 0 for p in plain)
    seeded = plan_split(data, spec, "train", None, 3)
    assert sorted(seeded) == sorted(plain) and seeded != plain
    assert plan_split(data, spec, "train", None, 3) == seeded  # the same seed, the same order
    cut = plan_split(data, spec, "train", 1000, None)
    assert [(p.row_group, p.rows) for p in cut] == [(0, ROW_GROUP), (1, 300)]


def test_a_file_holding_other_rows_than_dataset_json_says_is_refused(data, tmp_path):
    spec = load_dataset_spec(data)
    wrong = spec.model_copy(update={"splits": {**spec.splits, "train": spec.splits["train"].model_copy(update={"rows": 10})}})
    with pytest.raises(ValueError, match=r"split 'train': dataset.json says 10 rows, its Parquet files hold \d+"):
        plan_split(data, wrong, "train", None, 0)


def test_rank_slices_are_contiguous_disjoint_and_equal_for_train():
    pieces = [Piece("a", 0, 0, 700), Piece("a", 1, 0, 700), Piece("b", 0, 0, 301)]
    parts = [rank_slices(pieces, r, 3, equal=True) for r in range(3)]
    assert [sum(p.rows for p in part) for part in parts] == [567, 567, 567]  # 1701 rows, trimmed to 3·567
    assert parts[0] == [Piece("a", 0, 0, 567)]
    assert parts[1] == [Piece("a", 0, 567, 133), Piece("a", 1, 0, 434)]
    assert parts[2] == [Piece("a", 1, 434, 266), Piece("b", 0, 0, 301)]
    uneven = [rank_slices(pieces, r, 2, equal=False) for r in range(2)]
    assert [sum(p.rows for p in part) for part in uneven] == [850, 851]  # every row, for evaluation


def test_train_shards_take_the_same_steps_cover_the_split_and_reshuffle_reproducibly(data):
    spec = load_dataset_spec(data)
    rows = spec.splits["train"].rows
    pieces = plan_split(data, spec, "train", None, 7)
    readers = [_reader(data, pieces, r, 2, train=True) for r in range(2)]
    assert len(readers[0]) == len(readers[1]) == math.ceil((rows // 2) / 256)
    shards = [_ids(r) for r in readers]
    assert [len(s) for s in shards] == [len(r) for r in readers]
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen)) == rows - rows % 2  # disjoint, every row but the trimmed one
    assert _ids(_reader(data, pieces, 0, 2, train=True)) == shards[0]  # a fresh reader: the same batches
    readers[0].set_epoch(1)
    again = _ids(readers[0])
    assert again != shards[0] and sorted(i for b in again for i in b) == sorted(i for b in shards[0] for i in b)  # same rows, new order


def test_eval_shards_have_the_same_batch_count_and_hold_every_row_once_in_order(data):
    spec = load_dataset_spec(data)
    rows = spec.splits["valid"].rows
    pieces = plan_split(data, spec, "valid", None, None)
    readers = [_reader(data, pieces, r, 2, train=False, batch=100) for r in range(2)]
    assert len(readers[0]) == len(readers[1]) == math.ceil(math.ceil(rows / 2) / 100)
    ids = [i for r in readers for b in _ids(r) for i in b]
    assert ids == list(range(rows))
    limited = plan_split(data, spec, "valid", 250, None)
    assert [i for r in range(2) for b in _ids(_reader(data, limited, r, 2, train=False)) for i in b] == list(range(250))
