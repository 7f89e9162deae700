"""Field-aware libFM: libFFM lines and positional libFM, each field its own sparse feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.data.convert import ConversionError, convert
from recsys.features import load_dataset_spec

SIZES = [5, 7, 3, 20, 4, 6, 8, 2, 9, 11]  # ten fields, each its own index range
STARTS = np.cumsum([0] + SIZES[:-1])


def write_case(folder: Path, n: int = 400) -> tuple[Path, Path, Path, Path]:
    """The same rows as positional libFM, libFFM and a 10-column CSV (with its schema)."""
    rng = np.random.default_rng(0)
    libfm, ffm, csv = [], [], ["y," + ",".join(f"f{k}" for k in range(10))]
    for _ in range(n):
        idx = [int(STARTS[k] + rng.integers(0, SIZES[k])) for k in range(10)]
        y = int(rng.random() < 0.3)
        libfm.append(f"{y if y else -1} " + " ".join(f"{i}:1" for i in idx))
        ffm.append(f"{y} " + " ".join(f"{k}:{i}:1" for k, i in enumerate(idx)))
        csv.append(f"{y}," + ",".join(map(str, idx)))
    paths = folder / "a.libfm", folder / "a.ffm", folder / "a.csv", folder / "schema.yaml"
    for path, lines in zip(paths, (libfm, ffm, csv)):
        path.write_text("\n".join(lines) + "\n")
    paths[3].write_text("label: y\nsparse: [" + ", ".join(f"f{k}" for k in range(10)) + "]\n")
    return paths


def test_positional_libfm_has_the_vocabularies_of_the_equivalent_csv(tmp_path: Path) -> None:
    libfm, ffm, csv, schema = write_case(tmp_path)
    kw = {"progress": False, "min_count": 2, "split_by": "order"}  # the same rows in train (the CSV has a header line)
    a = convert("libfm", libfm, tmp_path / "pos", libfm_fields="positional", **kw)  # type: ignore[arg-type]
    b = convert("csv", csv, tmp_path / "csv", schema_path=schema, **kw)  # type: ignore[arg-type]
    c = convert("libffm", ffm, tmp_path / "ffm", **kw)  # type: ignore[arg-type]
    assert [f.name for f in a.sparse_fields] == [f"f{k}" for k in range(10)] == [f.name for f in c.sparse_fields]
    assert all(f.multi_valued and f.weighted for f in a.sparse_fields)
    for k in range(10):
        want = pq.read_table(tmp_path / "csv" / f"vocab/f{k}.parquet")
        assert pq.read_table(tmp_path / "pos" / f"vocab/f{k}.parquet").equals(want)
        assert pq.read_table(tmp_path / "ffm" / f"vocab/f{k}.parquet").equals(want)
        assert a.field(f"f{k}").cardinality == b.field(f"f{k}").cardinality == 2 + want.num_rows
    assert {k: v.rows for k, v in a.splits.items()} == {k: v.rows for k, v in c.splits.items()}
    train = pq.read_table(tmp_path / "pos" / a.splits["train"].files[0])
    assert all(len(v) == 1 for v in train.column("f3__id").to_pylist())  # one value per field per row
    assert set(train.column("f3__w").combine_chunks().flatten().to_numpy()) == {1.0}
    layout = BatchLayout.from_spec(load_dataset_spec(tmp_path / "pos"), id_scheme="index")
    batch = next(iter(ParquetBatchReader(tmp_path / "pos", "train", layout, batch_size=64)))
    assert batch.sparse_features.keys() == [f"f{k}" for k in range(10)]


def test_libffm_fields_may_hold_several_values_and_appear_late(tmp_path: Path) -> None:
    src = tmp_path / "a.ffm"
    src.write_text("1 0:a:1 0:b:0.5 2:c:2\n0 2:c:1\n\n1 7:z:3\n")
    spec = convert("libffm", src, tmp_path / "ds", progress=False, split=(1.0, 0.0, 0.0))
    assert [f.name for f in spec.sparse_fields] == ["f0", "f2", "f7"]
    t = pq.read_table(tmp_path / "ds" / spec.splits["train"].files[0]).to_pydict()
    assert [len(v) for v in t["f0__id"]] == [2, 0, 0] and t["f0__w"][0] == [1.0, 0.5]
    assert t["f7__w"] == [[], [], [3.0]] and t["f2__w"] == [[2.0], [1.0], []]


def test_malformed_field_aware_lines_name_file_line_and_problem(tmp_path: Path) -> None:
    libfm, _, _, _ = write_case(tmp_path, 50)
    lines = libfm.read_text().splitlines()
    cases = {
        "range": (
            lines[:20] + ["1 3:1 3:1 " + " ".join(lines[20].split()[3:])] + lines[21:],
            r"line 21: index 3 at position 1 \(field f1\) overlaps the index range \[0, 4\] of position 0",
        ),
        "count": (lines[:7] + [" ".join(lines[7].split()[:-1])] + lines[8:], "line 8, field 'features': expected 10"),
        "token": (lines[:3] + [lines[3].replace(":1", ":x", 1)] + lines[4:], "line 4, field 'features': feature must be idx:value"),
    }
    for name, (body, message) in cases.items():
        src = tmp_path / f"{name}.libfm"
        src.write_text("\n".join(body) + "\n")
        with pytest.raises(ConversionError, match=message):
            convert("libfm", src, tmp_path / "out", libfm_fields="positional", progress=False)
        assert not (tmp_path / "out").exists()
    src = tmp_path / "range.libfm"
    spec = convert("libfm", src, tmp_path / "skip", libfm_fields="positional", progress=False, on_bad_row="skip")
    assert spec.bad_rows_by_reason == {"index_out_of_range": 1} and sum(s.rows for s in spec.splits.values()) == 49
    (tmp_path / "bad.ffm").write_text("1 0:a:1\n1 x:b:1\n")
    with pytest.raises(ConversionError, match="line 2, field 'features': feature must be field:idx:value .* 'x:b:1'"):
        convert("libffm", tmp_path / "bad.ffm", tmp_path / "out", progress=False)
    with pytest.raises(ConversionError, match="libfm_fields is for format libfm"):
        convert("criteo", tmp_path / "bad.ffm", tmp_path / "out", libfm_fields="positional", progress=False)
