"""Round trips of the streaming converter (``recsys.data.convert``) on small generated files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recsys.data.convert as convert_module
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.data.convert import convert
from recsys.data.stages import assign_splits
from recsys.data.textreader import TextFormat, read_chunks
from recsys.data.vocab import FrequencyCounter, by_decreasing_count
from recsys.features import load_dataset_spec
from recsys.hashing import hash64_str, hash64_strings

CRITEO_NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


def slog1p(x: float) -> np.float32:
    return np.float32(np.sign(x) * np.log1p(abs(x)))


def criteo_rows(n: int, seed: int = 0) -> list[list[str]]:
    """Rows as lists of strings: I1 = row number, skewed categorical pools, some empties."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n):
        ints = [str(r)] + [("" if rng.random() < 0.2 else str(int(rng.integers(-3, 1000)))) for _ in range(12)]
        cats = [("" if rng.random() < 0.1 else f"{int(rng.integers(0, 3 + 2 * k) ** 2 % 997):08x}") for k in range(26)]
        rows.append([str(int(rng.random() < 0.3))] + ints + cats)
    return rows


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_criteo(path: Path, rows: list[list[str]]) -> Path:
    return write_lines(path, ["\t".join(r) for r in rows])


def read_split(folder: Path, split: str) -> pa.Table:
    spec = load_dataset_spec(folder)
    return pa.concat_tables([pq.read_table(folder / f) for f in spec.splits[split].files])


def read_all(folder: Path) -> pa.Table:
    """All rows, back in input order (I1 holds slog1p(row number))."""
    table = pa.concat_tables([read_split(folder, s) for s in ("train", "valid", "test")])
    return table.take(pa.array(np.argsort(table.column("I1").to_numpy(), kind="stable")))


@pytest.fixture(scope="module")
def criteo_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[list[str]], Path]:
    tmp = tmp_path_factory.mktemp("criteo")
    rows = criteo_rows(300)
    src = write_criteo(tmp / "train.txt", rows)
    out = tmp / "ds"
    convert("criteo", src, out, min_count=3, progress=False, seed=7, chunk_rows=64, rows_per_file=100)
    return rows, out


def test_criteo_values_ids_and_layout(criteo_case: tuple[list[list[str]], Path]) -> None:
    rows, out = criteo_case
    spec = load_dataset_spec(out)
    table = read_all(out)
    assert table.num_rows == len(rows) == sum(s.rows for s in spec.splits.values())
    expected_cols = ["label"] + [f"I{i}" for i in range(1, 14)]
    for i in range(1, 27):
        expected_cols += [f"C{i}", f"C{i}__id"]
    assert read_split(out, "train").column_names == expected_cols
    assert table.schema.field("label").type == pa.float32() and table.schema.field("I2").type == pa.float32()
    assert table.schema.field("C1").type == pa.int64() and table.schema.field("C1__id").type == pa.int64()
    np.testing.assert_array_equal(table.column("label").to_numpy(), [float(r[0]) for r in rows])
    for j, name in ((2, "I2"), (5, "I5")):
        want = [slog1p(float(r[j])) if r[j] else np.float32(0) for r in rows]
        np.testing.assert_allclose(table.column(name).to_numpy(), want, rtol=1e-6)
    for j, name in ((14, "C1"), (25, "C12"), (39, "C26")):
        raw = [r[j] for r in rows]
        np.testing.assert_array_equal(table.column(f"{name}__id").to_numpy(), hash64_strings(raw))
        index = table.column(name).to_numpy()
        assert ((index == 0) == np.array([v == "" for v in raw])).all()
    assert all(f.transform == "slog1p" for f in spec.dense_fields)
    assert spec.id_scheme.min_count == 3 and spec.source == "criteo" and spec.bad_rows == 0


def test_criteo_vocabulary_from_train_with_min_count(criteo_case: tuple[list[list[str]], Path]) -> None:
    _, out = criteo_case
    spec = load_dataset_spec(out)
    train, everything = read_split(out, "train"), read_all(out)
    missing = hash64_str("")
    for field in spec.sparse_fields:
        ids = train.column(f"{field.name}__id").to_numpy()
        uniq, counts = np.unique(ids[ids != missing], return_counts=True)
        vocab = pq.read_table(out / field.vocabulary)
        kept = counts >= 3
        order = np.lexsort((uniq[kept], -counts[kept]))
        np.testing.assert_array_equal(vocab.column("id").to_numpy(), uniq[kept][order])
        np.testing.assert_array_equal(vocab.column("count").to_numpy(), counts[kept][order])
        assert field.cardinality == vocab.num_rows + 2 and field.num_distinct == len(uniq)
        position = {int(v): r + 2 for r, v in enumerate(vocab.column("id").to_numpy())}
        all_ids = everything.column(f"{field.name}__id").to_numpy()
        want = [0 if i == missing else position.get(int(i), 1) for i in all_ids]
        np.testing.assert_array_equal(everything.column(field.name).to_numpy(), want)
    assert any(f.cardinality < f.num_distinct + 2 for f in spec.sparse_fields)


def test_splits_files_order_and_determinism(criteo_case: tuple[list[list[str]], Path], tmp_path: Path) -> None:
    rows, out = criteo_case
    spec = load_dataset_spec(out)
    assert spec.splits["train"].rows > spec.splits["valid"].rows > 0 and spec.splits["test"].rows > 0
    assert spec.splits["train"].files[:2] == ["train/part-00000.parquet", "train/part-00001.parquet"]
    for name, split in spec.splits.items():
        sizes = [pq.ParquetFile(out / f).metadata.num_rows for f in split.files]
        assert sum(sizes) == split.rows and max(sizes) <= 100
        table = read_split(out, name)
        assert np.all(np.diff(table.column("I1").to_numpy()) > 0), "rows keep input order"
        assert split.label_rate == pytest.approx(float(np.mean(table.column("label").to_numpy())))
    src = write_criteo(tmp_path / "again.txt", rows)
    same = convert("criteo", src, tmp_path / "same", min_count=3, progress=False, seed=7)
    other = convert("criteo", src, tmp_path / "other", min_count=3, progress=False, seed=8)
    assert other.splits.keys() == spec.splits.keys()
    assert {k: s.rows for k, s in same.splits.items()} == {k: s.rows for k, s in spec.splits.items()}
    for name in ("train", "valid", "test"):
        assert read_split(tmp_path / "same", name).equals(read_split(out, name))
    assert not read_split(tmp_path / "other", "test").equals(read_split(out, "test"))


def test_chunking_does_not_change_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_criteo(tmp_path / "in.txt", criteo_rows(400, seed=3))
    convert("criteo", src, tmp_path / "big", progress=False)
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 4096)
    convert("criteo", src, tmp_path / "small", progress=False, chunk_rows=10, rows_per_file=37)
    for name in ("train", "valid", "test"):
        assert read_split(tmp_path / "small", name).equals(read_split(tmp_path / "big", name))
    for f in load_dataset_spec(tmp_path / "big").sparse_fields:
        assert pq.read_table(tmp_path / "big" / f.vocabulary).equals(pq.read_table(tmp_path / "small" / f.vocabulary))


@pytest.mark.parametrize("scheme", ["index", "raw"])
def test_batches_from_converted_criteo(criteo_case: tuple[list[list[str]], Path], scheme: str) -> None:
    _, out = criteo_case
    spec = load_dataset_spec(out)
    layout = BatchLayout.from_spec(spec, id_scheme=scheme)  # type: ignore[arg-type]
    batches = list(ParquetBatchReader(out, "train", layout, batch_size=32))
    train = read_split(out, "train")
    assert sum(len(b) for b in batches) == train.num_rows
    first = batches[0]
    assert first.dense_features.shape == (32, 13)
    kjt = first.sparse_features.to_dict()
    for name in ("C1", "C26"):
        column = name if scheme == "index" else f"{name}__id"
        np.testing.assert_array_equal(kjt[name].values().numpy(), train.column(column).to_numpy()[:32])
    np.testing.assert_array_equal(first.labels.numpy(), train.column("label").to_numpy()[:32])


def test_avazu_hour_derivation(tmp_path: Path) -> None:
    header = "id,click,hour,C1,banner_pos,site_id,device_type"
    lines = [header, "1001,0,14102100,1005,0,1fbe01fe,1", "1002,1,14102213,1005,1,,1", "1003,0,14102623,1002,0,abc,0"]
    out = tmp_path / "avazu"
    spec = convert("avazu", write_lines(tmp_path / "train.csv", lines), out, split=(1.0, 0.0, 0.0), progress=False)
    names = [f.name for f in spec.fields]
    assert names == ["hour_of_day", "weekday", "C1", "banner_pos", "site_id", "device_type"]
    assert all(f.kind == "sparse" for f in spec.fields)
    table = read_split(out, "train")
    assert "id" not in table.column_names and "hour" not in table.column_names
    np.testing.assert_array_equal(table.column("label").to_numpy(), [0, 1, 0])
    weekdays = [str(date(2014, 10, d).weekday()) for d in (21, 22, 26)]
    np.testing.assert_array_equal(table.column("hour_of_day__id").to_numpy(), hash64_strings(["0", "13", "23"]))
    np.testing.assert_array_equal(table.column("weekday__id").to_numpy(), hash64_strings(weekdays))
    np.testing.assert_array_equal(table.column("site_id").to_numpy()[1], 0)
    assert spec.splits["valid"].rows == 0 and spec.splits["valid"].files == ["valid/part-00000.parquet"]


def test_libfm_multi_valued_weighted(tmp_path: Path) -> None:
    lines = ["1 3:0.5 7:1", "-1 2:2 3:1.5 9:-1", "0", "  1\t7:0.25  ", "", "-1 3:1"]
    out = tmp_path / "fm"
    spec = convert("libfm", write_lines(tmp_path / "a.libfm", lines), out, split=(1.0, 0.0, 0.0), progress=False)
    field = spec.field("features")
    assert field.multi_valued and field.weighted and field.cardinality == 4 + 2 and field.num_distinct == 4
    table = read_split(out, "train")
    assert table.column_names == ["label", "features", "features__id", "features__w"]
    assert table.schema.field("features__w").type == pa.list_(pa.float32())
    np.testing.assert_array_equal(table.column("label").to_numpy(), [1, 0, 0, 1, 0])
    assert table.column("features__id").to_pylist()[1] == hash64_strings(["2", "3", "9"]).tolist()
    assert table.column("features__w").to_pylist()[1] == [2.0, 1.5, -1.0]
    vocab = pq.read_table(out / field.vocabulary).column("id").to_pylist()
    assert vocab[:2] == [hash64_str("3"), hash64_str("7")]
    assert table.column("features").to_pylist()[:3] == [[2, 3], [4, 2, 5], []]
    layout = BatchLayout.from_spec(spec, id_scheme="raw")
    batch = next(iter(ParquetBatchReader(out, "train", layout, batch_size=8)))
    kjt = batch.sparse_features.to_dict()["features"]
    assert kjt.lengths().tolist() == [2, 3, 0, 1, 1]
    assert kjt.values().tolist() == hash64_strings(["3", "7", "2", "3", "9", "7", "3"]).tolist()
    assert kjt.weights().tolist() == [0.5, 1.0, 2.0, 1.5, -1.0, 0.25, 1.0]


def test_csv_schema_with_multi_valued_column(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text("delimiter: ';'\nlabel: clicked\ndense: [price]\nsparse: [user]\nmulti_valued: {tags: '|'}\ndrop: [request]\n")
    lines = ["request;user;tags;price;clicked", "r1;u1;a|b;10;1", "r2;u2;;-2.5;0", "r3;u1;b||c;;1", 'r4;"u;3";a;1e2;0']
    out = tmp_path / "csv"
    spec = convert("csv", write_lines(tmp_path / "d.csv", lines), out, schema_path=schema, split=(1, 0, 0), progress=False)
    assert [(f.name, f.kind, f.multi_valued) for f in spec.fields] == [("price", "dense", False), ("user", "sparse", False), ("tags", "sparse", True)]
    table = read_split(out, "train")
    assert table.column_names == ["label", "price", "user", "user__id", "tags", "tags__id"]
    np.testing.assert_allclose(table.column("price").to_numpy(), [slog1p(10), slog1p(-2.5), 0, slog1p(100)])
    assert table.column("tags__id").to_pylist() == [hash64_strings(["a", "b"]).tolist(), [], hash64_strings(["b", "c"]).tolist(), [hash64_str("a")]]
    assert table.column("user__id").to_pylist()[3] == hash64_str("u;3")
    index = {h: i + 2 for i, h in enumerate(sorted([hash64_str("a"), hash64_str("b")]))}
    index[hash64_str("c")] = 4
    assert table.column("tags").to_pylist() == [[index[v] for v in ids] for ids in table.column("tags__id").to_pylist()]
    layout = BatchLayout.from_spec(spec)
    kjt = next(iter(ParquetBatchReader(out, "train", layout, batch_size=4))).sparse_features.to_dict()
    assert kjt["tags"].lengths().tolist() == [2, 0, 2, 1] and kjt["user"].lengths().tolist() == [1, 1, 1, 1]


def test_csv_without_header(tmp_path: Path) -> None:
    schema = tmp_path / "s.yaml"
    schema.write_text("header: false\ncolumns: [y, a, b]\nlabel: y\nsparse: [a, b]\n")
    src = write_lines(tmp_path / "d.csv", ["1,x,y", "0,x,"])
    spec = convert("csv", src, tmp_path / "o", schema_path=schema, split=(1, 0, 0), progress=False)
    table = read_split(tmp_path / "o", "train")
    assert spec.splits["train"].rows == 2 and table.column("b").to_pylist() == [2, 0]


def test_read_chunks_line_numbers_skip_ragged_rows(tmp_path: Path) -> None:
    lines = [f"{i}\tx" if i % 7 else "bad" for i in range(1, 200)]
    src = write_lines(tmp_path / "t.tsv", lines)
    got, ragged = [], []
    for chunk in read_chunks(src, TextFormat("\t", header=False), ["a", "b"], 10, block_size=256):
        assert chunk.table.column("a").to_pylist() == [str(n) for n in chunk.lines]
        got += chunk.lines.tolist()
        ragged += [r.line for r in chunk.ragged]
    assert got == [i for i in range(1, 200) if i % 7]
    assert ragged == [i for i in range(1, 200) if i % 7 == 0]


def test_progress_bar_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_criteo(tmp_path / "in.txt", criteo_rows(20))
    convert("criteo", src, tmp_path / "o", progress=True)
    assert "in.txt" in capsys.readouterr().err


def test_vocabulary_order_by_count_is_the_stable_argsort() -> None:
    rng = np.random.default_rng(2)
    for high in (1, 3, 70_000, 65_536, 65_537, 2**40):
        counts = rng.integers(1, high + 1, 5000).astype(np.int64)
        np.testing.assert_array_equal(by_decreasing_count(counts), np.argsort(-counts, kind="stable"))
    counts = np.array([65_537, 2, 2, 65_537, 1], np.int64)  # a span of 65,536: the general path
    assert by_decreasing_count(counts).tolist() == [0, 3, 1, 2, 4]
    assert by_decreasing_count(np.zeros(0, np.int64)).tolist() == []


def test_frequency_counter_merges_like_unique() -> None:
    rng = np.random.default_rng(0)
    counter = FrequencyCounter(merge_at=500)
    batches = [rng.integers(-50, 3000, 700) for _ in range(40)]
    for batch in batches:
        counter.add(*np.unique(batch, return_counts=True))
    ids, counts = counter.result()
    want_ids, want_counts = np.unique(np.concatenate(batches), return_counts=True)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(counts, want_counts)


def test_split_fractions_are_respected() -> None:
    splits = assign_splits(np.arange(1, 200_001), seed=3, fractions=(0.7, 0.2, 0.1))
    np.testing.assert_allclose(np.bincount(splits) / len(splits), [0.7, 0.2, 0.1], atol=0.005)
    assert (assign_splits(np.arange(1, 1000), seed=3, fractions=(1.0, 0.0, 0.0)) == 0).all()
