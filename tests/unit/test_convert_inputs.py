"""Inputs as users have them: Parquet with a schema, many and compressed files, pre-split and ordered splits."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.cli import main
from recsys.data.convert import ConversionError, convert
from recsys.data.inputs import expand_inputs
from recsys.features import load_dataset_spec
from recsys.hashing import hash64_strings

SCHEMA = "label: y\ndense: [price]\nsparse: [user, item]\nmulti_valued: {tags: '|'}\ndrop: [ts]\n"


def table(n: int, seed: int = 0) -> pa.Table:
    """Typed columns: int label, float dense (NaN and null missing), string and int sparse, a list column, a timestamp."""
    rng = np.random.default_rng(seed)
    price = np.round(rng.random(n) * 100, 3)
    price_list = [None if i % 17 == 0 else (float("nan") if i % 19 == 0 else float(p)) for i, p in enumerate(price)]
    return pa.table(
        {
            "y": pa.array(rng.integers(0, 2, n)),
            "price": pa.array(price_list, pa.float64()),
            "user": pa.array([None if i % 23 == 0 else f"u{i % 37}" for i in range(n)]),
            "item": pa.array(rng.integers(0, 50, n)),
            "tags": pa.array([[f"t{j}" for j in range(i % 4)] for i in range(n)], pa.list_(pa.string())),
            "ts": pa.array(np.datetime64("2024-01-01T00:00:00", "s") + np.arange(n) * 3600, pa.timestamp("s")),
        }
    )


def as_csv(t: pa.Table, path: Path) -> Path:
    """The same rows as CSV text (tags joined by '|', missing as empty)."""
    lines = ["y,price,user,item,tags,ts"]
    for r in t.to_pylist():
        price = "" if r["price"] is None or r["price"] != r["price"] else repr(r["price"])
        lines.append(f"{r['y']},{price},{r['user'] or ''},{r['item']},{'|'.join(r['tags'])},{r['ts'].isoformat()}")
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(folder: Path) -> pa.Table:
    spec = load_dataset_spec(folder)
    return pa.concat_tables([pq.read_table(folder / f) for s in spec.splits.values() for f in s.files])


@pytest.fixture
def parquet_case(tmp_path: Path) -> tuple[pa.Table, Path, Path]:
    t = table(600)
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=200)
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    return t, tmp_path / "a.parquet", tmp_path / "schema.yaml"


def test_parquet_converts_like_the_same_rows_as_csv(parquet_case: tuple[pa.Table, Path, Path], tmp_path: Path) -> None:
    t, src, schema = parquet_case
    a = convert("parquet", src, tmp_path / "pq", schema_path=schema, progress=False, min_count=2, split_by="order")
    b = convert(
        "csv", as_csv(t, tmp_path / "a.csv"), tmp_path / "csv", schema_path=schema, progress=False, min_count=2, split_by="order"
    )  # the same rows in the same splits (a random split keys on lines, and CSV has a header)
    assert [f.model_dump() for f in a.fields] == [f.model_dump() for f in b.fields]
    assert {k: v.rows for k, v in a.splits.items()} == {k: v.rows for k, v in b.splits.items()}
    assert rows(tmp_path / "pq").equals(rows(tmp_path / "csv"))
    for f in ("user", "item", "tags"):
        assert pq.read_table(tmp_path / "pq" / f"vocab/{f}.parquet").equals(pq.read_table(tmp_path / "csv" / f"vocab/{f}.parquet"))
    got = rows(tmp_path / "pq").to_pydict()
    assert set(got["item__id"]) <= set(hash64_strings([str(i) for i in range(50)]).tolist())  # ints as decimal strings
    assert a.source == "parquet" and sum(s.rows for s in a.splits.values()) == 600


def test_parquet_bad_values_name_row_group_row_and_field(parquet_case: tuple[pa.Table, Path, Path], tmp_path: Path) -> None:
    t, _, schema = parquet_case
    bad = t.set_column(0, "y", pa.array(np.where(np.arange(len(t)) == 450, 2, t.column("y").to_numpy())))
    pq.write_table(bad, tmp_path / "bad.parquet", row_group_size=200)
    with pytest.raises(ConversionError) as info:
        convert("parquet", tmp_path / "bad.parquet", tmp_path / "out", schema_path=schema, progress=False)
    assert (info.value.row_group, info.value.row, info.value.field) == (2, 451, "y")
    assert "row group 2, row 451, field 'y': label must be 0 or 1, found 2" in str(info.value)
    spec = convert("parquet", tmp_path / "bad.parquet", tmp_path / "out", schema_path=schema, progress=False, on_bad_row="skip")
    assert spec.bad_rows_by_reason == {"bad_label": 1} and sum(s.rows for s in spec.splits.values()) == 599
    inf = t.set_column(1, "price", pa.array([float("inf")] + t.column("price").to_pylist()[1:]))
    pq.write_table(inf, tmp_path / "inf.parquet")
    with pytest.raises(ConversionError, match="row group 0, row 1, field 'price': non-numeric dense value inf"):
        convert("parquet", tmp_path / "inf.parquet", tmp_path / "out2", schema_path=schema, progress=False)
    assert not (tmp_path / "out2").exists()


def test_parquet_schema_problems_are_named(parquet_case: tuple[pa.Table, Path, Path], tmp_path: Path) -> None:
    t, src, schema = parquet_case
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("label: y\ndense: [tags]\nsparse: [user, item, price]\ndrop: [ts]\n")
    with pytest.raises(ConversionError, match="column type list<element: string> cannot be dense") as info:
        convert("parquet", src, tmp_path / "out", schema_path=wrong, progress=False)
    assert info.value.field == "tags"
    unlisted = tmp_path / "unlisted.yaml"
    unlisted.write_text("label: y\ndense: [price]\nsparse: [user, item]\nmulti_valued: {tags: '|'}\n")
    with pytest.raises(ConversionError, match="not listed under") as info:
        convert("parquet", src, tmp_path / "out", schema_path=unlisted, progress=False)
    assert info.value.field == "ts"
    pq.write_table(t.drop_columns(["item"]), tmp_path / "b.parquet")
    with pytest.raises(ConversionError, match="missing from the Parquet schema") as info:
        convert("parquet", [src, tmp_path / "b.parquet"], tmp_path / "out", schema_path=schema, progress=False)
    assert info.value.file == str(tmp_path / "b.parquet") and info.value.field == "item"
    (tmp_path / "not.parquet").write_text("y,price\n1,2\n")
    with pytest.raises(ConversionError, match="cannot read as Parquet"):
        convert("parquet", tmp_path / "not.parquet", tmp_path / "out", schema_path=schema, progress=False)
    assert not (tmp_path / "out").exists()


def test_split_by_time_and_by_order(parquet_case: tuple[pa.Table, Path, Path], tmp_path: Path) -> None:
    t, src, schema = parquet_case  # ts: hourly from 2024-01-01 00:00
    spec = convert(
        "parquet",
        src,
        tmp_path / "t",
        schema_path=schema,
        progress=False,
        split_by="time",
        time_column="ts",
        time_cuts=["2024-01-15", "2024-01-20T12:00:00Z"],
    )
    assert {k: v.rows for k, v in spec.splits.items()} == {"train": 14 * 24, "valid": 5 * 24 + 12, "test": 600 - 468}
    csv = as_csv(t, tmp_path / "a.csv")
    by_text = convert(
        "csv",
        csv,
        tmp_path / "tc",
        schema_path=schema,
        progress=False,
        split_by="time",
        time_column="ts",
        time_cuts=["2024-01-15", "2024-01-20T12:00:00Z"],
    )
    assert {k: v.rows for k, v in by_text.splits.items()} == {k: v.rows for k, v in spec.splits.items()}
    spec = convert("parquet", src, tmp_path / "o", schema_path=schema, progress=False, split_by="order", split=(0.7, 0.2, 0.1))
    assert {k: v.rows for k, v in spec.splits.items()} == {"train": 420, "valid": 120, "test": 60}
    last = pq.read_table(tmp_path / "o" / spec.splits["test"].files[0])
    assert last.column("item__id").equals(rows_of(tmp_path / "o", t.slice(540), "item"))
    with pytest.raises(ConversionError, match="cut points must both be numbers or both ISO 8601") as info:
        convert(
            "parquet", src, tmp_path / "x", schema_path=schema, progress=False, split_by="time", time_column="ts", time_cuts=["2024-01-15", "later"]
        )
    assert info.value.field == "time_cuts"
    with pytest.raises(ConversionError, match="time column holds timestamp.m?s.; with these cut points it must hold numbers"):
        convert("parquet", src, tmp_path / "x", schema_path=schema, progress=False, split_by="time", time_column="ts", time_cuts=["1", "2"])
    with pytest.raises(ConversionError, match="time column not among the columns") as info:
        convert("csv", csv, tmp_path / "x", schema_path=schema, progress=False, split_by="time", time_column="when", time_cuts=["1", "2"])
    with pytest.raises(ConversionError, match="time must be a number, found '2024-01-01T00:00:00'") as info:
        convert("csv", csv, tmp_path / "x", schema_path=schema, progress=False, split_by="time", time_column="ts", time_cuts=["1", "2"])
    assert (info.value.line, info.value.field) == (2, "ts")


def rows_of(folder: Path, t: pa.Table, name: str) -> pa.ChunkedArray:
    """The raw ids the converter gives ``t``'s column ``name``."""
    return pa.chunked_array([pa.array(hash64_strings(pa.array([str(v) for v in t.column(name).to_pylist()])))])


def criteo_lines(n: int, start: int) -> list[str]:
    return [f"{(i * 7) % 2}\t{i}" + "\t" * 12 + "\t" + "\t".join(f"{(i * k) % 5:x}" for k in range(26)) for i in range(start, start + n)]


def test_many_compressed_files_read_in_natural_order(tmp_path: Path) -> None:
    lines = criteo_lines(90, 0)
    (tmp_path / "day_2.gz").write_bytes(gzip.compress(("\n".join(lines[30:60]) + "\n").encode()))
    (tmp_path / "day_10.bz2").write_bytes(bz2.compress(("\n".join(lines[60:]) + "\n").encode()))
    with pa.CompressedOutputStream(str(tmp_path / "day_1.zst"), "zstd") as f:
        f.write(("\n".join(lines[:30]) + "\n").encode())
    assert [p.name for p in expand_inputs([str(tmp_path / "day_*")])] == ["day_1.zst", "day_2.gz", "day_10.bz2"]
    (tmp_path / "all.tsv").write_text("\n".join(lines) + "\n")
    many = convert("criteo", str(tmp_path / "day_*"), tmp_path / "many", progress=False, split_by="order", split=(0.6, 0.2, 0.2))
    one = convert("criteo", tmp_path / "all.tsv", tmp_path / "one", progress=False, split_by="order", split=(0.6, 0.2, 0.2))
    assert rows(tmp_path / "many").equals(rows(tmp_path / "one"))
    assert {k: v.rows for k, v in one.splits.items()} == {k: v.rows for k, v in many.splits.items()}
    assert {k: v.rows for k, v in many.splits.items()} == {"train": 54, "valid": 18, "test": 18}
    test_i1 = pq.read_table(tmp_path / "many" / many.splits["test"].files[0]).column("I1").to_numpy()
    assert np.allclose(np.expm1(test_i1), np.arange(72, 90), atol=1e-3)  # the last rows, those of day_10
    (tmp_path / "day_3.gz").write_bytes(gzip.compress(("\n".join(lines[:5]) + "\n").encode())[:-12])  # truncated
    with pytest.raises(ConversionError, match="cannot parse") as info:
        convert("criteo", str(tmp_path / "day_*"), tmp_path / "bad", progress=False)
    assert info.value.file == str(tmp_path / "day_3.gz")
    (tmp_path / "day_3.gz").write_bytes(gzip.compress(b"1\t2\n"))
    with pytest.raises(ConversionError, match="expected 40 columns, found 2") as info:
        convert("criteo", str(tmp_path / "day_*"), tmp_path / "bad", progress=False)
    assert (info.value.file, info.value.line) == (str(tmp_path / "day_3.gz"), 1)
    with pytest.raises(ConversionError, match="matches no file"):
        convert("criteo", str(tmp_path / "nope_*"), tmp_path / "bad", progress=False)
    with pytest.raises(ConversionError, match="named twice"):
        convert("criteo", [tmp_path / "all.tsv", tmp_path / "all.tsv"], tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_presplit_inputs_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = "y,price,user,item,tags,ts"
    for name, start, n in (("tr_a", 0, 40), ("tr_b", 40, 30), ("va", 70, 20), ("te", 90, 10)):
        body = [f"{i % 2},{i},u{i % 7},{i % 5},a|b,2024-01-01" for i in range(start, start + n)]
        (tmp_path / f"{name}.csv").write_text("\n".join([header, *body]) + "\n")
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    out = tmp_path / "ds"
    code = main(
        [
            "data",
            "convert",
            "--format",
            "csv",
            "--schema",
            str(tmp_path / "schema.yaml"),
            "--out",
            str(out),
            "--train",
            str(tmp_path / "tr_a.csv"),
            str(tmp_path / "tr_b.csv"),
            "--valid",
            str(tmp_path / "va.csv"),
            "--test",
            str(tmp_path / "te.csv"),
        ]
    )
    assert code == 0 and "train         70 rows" in capsys.readouterr().out
    spec = load_dataset_spec(out)
    assert {k: v.rows for k, v in spec.splits.items()} == {"train": 70, "valid": 20, "test": 10}
    valid = pq.read_table(out / spec.splits["valid"].files[0]).column("price").to_numpy()
    assert np.allclose(np.expm1(valid), np.arange(70, 90), rtol=1e-5)
    (tmp_path / "other.csv").write_text("y,price,user,item,tags\n1,2,a,b,c\n")
    with pytest.raises(ConversionError, match="header differs") as info:
        convert(
            "csv",
            None,
            tmp_path / "bad",
            schema_path=tmp_path / "schema.yaml",
            progress=False,
            presplit={"train": [tmp_path / "tr_a.csv"], "valid": tmp_path / "other.csv", "test": tmp_path / "te.csv"},
        )
    assert (info.value.file, info.value.line) == (str(tmp_path / "other.csv"), 1)
    with pytest.raises(ConversionError, match="needs files for each of train, valid and test"):
        convert(
            "csv",
            None,
            tmp_path / "bad",
            schema_path=tmp_path / "schema.yaml",
            progress=False,
            presplit={"train": [tmp_path / "tr_a.csv"], "test": tmp_path / "te.csv"},
        )
    with pytest.raises(ConversionError, match="named twice"):
        convert(
            "csv",
            None,
            tmp_path / "bad",
            schema_path=tmp_path / "schema.yaml",
            progress=False,
            presplit={"train": [tmp_path / "tr_a.csv"], "valid": tmp_path / "te.csv", "test": tmp_path / "te.csv"},
        )
    assert not (tmp_path / "bad").exists()


def test_parquet_to_dataset_to_recsys_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A feature store's retrieval as Parquet → ``recsys data convert`` → ``recsys train`` learns its planted signal."""
    import json

    rng = np.random.default_rng(1)
    n = 6000
    user = rng.integers(0, 40, n)
    item = rng.integers(0, 30, n)
    price = rng.normal(0, 1, n)
    logit = np.where(user % 2 == 0, 1.5, -1.5) + np.where(item < 10, 1.0, -0.5) + price
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    t = pa.table(
        {
            "y": y,
            "price": price,
            "user": pa.array([f"u{u}" for u in user]),
            "item": item,
            "tags": pa.array([[f"t{i % 3}"] for i in item]),
            "ts": pa.array(np.datetime64("2024-01-01T00:00:00", "s") + np.arange(n) * 60, pa.timestamp("s")),
        }
    )
    pq.write_table(t, tmp_path / "retrieval.parquet", row_group_size=1000)
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    data = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "convert",
                "--format",
                "parquet",
                "--input",
                str(tmp_path / "retrieval.parquet"),
                "--schema",
                str(tmp_path / "schema.yaml"),
                "--out",
                str(data),
            ]
        )
        == 0
    )
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[2]
    assert (
        main(
            [
                "train",
                "--config",
                str(root / "configs/quickstart.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--tracking-uri",
                f"sqlite:///{tmp_path}/mlflow.db",
                "--set",
                f"data.path={data}",
                "--set",
                "training.epochs=2",
                "--set",
                "training.batch_size=256",
                "--set",
                "training.progress=false",
                "--set",
                "training.sparse_eps=1e-8",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_auc"] > 0.75, metrics


def test_cli_many_inputs_by_order_and_by_time(tmp_path: Path) -> None:
    header = "y,price,user,item,tags,ts"
    for name, start in (("b_10", 50), ("b_9", 0)):  # natural order: b_9 (rows 0..49) before b_10
        body = [f"{i % 2},{i},u{i % 7},{i % 5},a,2024-01-{1 + i // 10:02d}" for i in range(start, start + 50)]
        (tmp_path / f"{name}.csv").write_text("\n".join([header, *body]) + "\n")
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    base = ["data", "convert", "--format", "csv", "--schema", str(tmp_path / "schema.yaml")]
    assert main([*base, "--input", str(tmp_path / "b_*.csv"), "--split-by-order", "--split", "0.6,0.2,0.2", "--out", str(tmp_path / "o")]) == 0
    spec = load_dataset_spec(tmp_path / "o")
    test = pq.read_table(tmp_path / "o" / spec.splits["test"].files[0]).column("price").to_numpy()
    assert np.allclose(np.expm1(test), np.arange(80, 100), rtol=1e-5)
    assert (
        main(
            [
                *base,
                "--input",
                str(tmp_path / "b_9.csv"),
                str(tmp_path / "b_10.csv"),
                "--time-column",
                "ts",
                "--time-cuts",
                "2024-01-06,2024-01-09",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    spec = load_dataset_spec(tmp_path / "t")
    assert {k: v.rows for k, v in spec.splits.items()} == {"train": 50, "valid": 30, "test": 20}


def test_long_lines_in_a_compressed_file_recover_like_plain_text(tmp_path: Path) -> None:
    """The reader's restarts after a long line work on decompressed offsets: same rows, lines and bad rows."""
    from recsys.data.textreader import TextFormat, read_chunks

    lines = [f"{i}\tv{i}" for i in range(200)]
    lines[50] = "50\t" + "x" * 5000
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "a.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    fmt = TextFormat("\t", header=False, quoting=False)
    for limit in (None, 2000):
        got = []
        for name in ("a.txt", "a.gz"):
            chunks = list(read_chunks(tmp_path / name, fmt, ["a", "b"], 1000, block_size=1024, max_row_bytes=limit))
            got.append(
                (
                    pa.concat_tables([c.table for c in chunks]).to_pydict(),
                    np.concatenate([c.lines for c in chunks]).tolist(),
                    [r for c in chunks for r in c.ragged],
                )
            )
        assert got[0] == got[1]
        assert len(got[1][1]) == (200 if limit is None else 199)
        if limit is not None:
            assert [r.line for r in got[1][2]] == [51] and got[1][2][0].reason == "line_too_long"
