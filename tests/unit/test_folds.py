"""``recsys.data.folds``: K cross-validation datasets from train ∪ valid, every row held out once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data.folds import fold_parts, write_folds
from recsys.data.synthetic import generate
from recsys.features import load_dataset_spec
from recsys.metrics import auc


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("folds-data") / "small"
    generate(out, rows=3000, profile="small_real", seed=0, progress=False)
    return out


def _rows(folder: Path, split: str, first: int | None = None) -> list[tuple]:
    spec = load_dataset_spec(folder)
    table = pq.read_table([folder / f for f in spec.splits[split].files][0])
    table = table.slice(0, first) if first is not None else table
    columns = [[tuple(v) if isinstance(v, list) else v for v in table.column(c).to_pylist()] for c in sorted(table.column_names)]
    return list(zip(*columns))


def test_every_row_is_held_out_once_and_trained_on_by_the_other_folds(small, tmp_path) -> None:
    folds = write_folds(small, 3, seed=0, out=tmp_path / "f")
    assert [f.name for f in folds] == ["fold0", "fold1", "fold2"]
    source = Counter(_rows(small, "train") + _rows(small, "valid"))
    held = [Counter(_rows(f, "valid")) for f in folds]
    assert sum(held, Counter()) == source, "the held-out parts partition train + valid"
    for fold, out in zip(folds, held):
        assert Counter(_rows(fold, "train")) + out == source, f"{fold.name} trains on all the rest"
    sizes = [sum(c.values()) for c in held]
    assert max(sizes) - min(sizes) <= 1
    src, spec = load_dataset_spec(small), load_dataset_spec(folds[1])
    assert spec.fields == src.fields and spec.name == f"{src.name}_fold1"
    assert spec.splits["test"] == src.splits["test"]
    assert (folds[1] / spec.splits["test"].files[0]).read_bytes() == (small / src.splits["test"].files[0]).read_bytes()
    for field in src.sparse_fields:
        assert (folds[1] / field.vocabulary).read_bytes() == (small / field.vocabulary).read_bytes()
    valid = pq.read_table(folds[1] / spec.splits["valid"].files[0])
    y, p = valid.column("label").to_numpy(), valid.column("__prob").to_numpy()
    assert spec.splits["valid"].rows == valid.num_rows and spec.splits["valid"].label_rate == pytest.approx(y.mean())
    assert spec.splits["valid"].oracle.auc == pytest.approx(auc(y, p)), "a synthetic fold's oracle is measured on its own rows"


def test_folds_are_reused_only_for_the_same_rows_and_settings(small, tmp_path) -> None:
    out = tmp_path / "f"
    first = write_folds(small, 2, seed=0, out=out)
    stamp = [(f / "dataset.json").stat().st_mtime_ns for f in first]
    assert [(f / "dataset.json").stat().st_mtime_ns for f in write_folds(small, 2, seed=0, out=out)] == stamp, "reused"
    held = Counter(_rows(first[0], "valid"))
    again = write_folds(small, 2, seed=1, out=out)
    assert Counter(_rows(again[0], "valid")) != held, "another seed: other parts, rewritten"
    assert json.loads((again[0] / "folds.json").read_text())["seed"] == 1
    limited = write_folds(small, 2, seed=0, out=out, max_train_rows=500, max_valid_rows=100)
    rows = Counter(_rows(limited[0], "valid")) + Counter(_rows(limited[1], "valid"))
    assert rows == Counter(_rows(small, "train", 500) + _rows(small, "valid", 100)), "the first rows a trial reads, no more"
    assert not list(out.glob(".*")), "no build folder is left behind"


def test_fold_parts_are_seeded_balanced_and_refuse_too_few() -> None:
    a = fold_parts(10, 3, seed=4)
    assert np.array_equal(a, fold_parts(10, 3, seed=4)) and not np.array_equal(a, fold_parts(10, 3, seed=5))
    assert sorted(np.bincount(a)) == [3, 3, 4]
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_parts(10, 1, seed=0)
    with pytest.raises(ValueError, match="2 train\\+valid rows cannot make 3 folds"):
        fold_parts(2, 3, seed=0)
