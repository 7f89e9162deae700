"""The synthetic generator (``recsys.data.synthetic``): format, determinism, vocabularies, oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from recsys.data import synthetic
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.data.synthetic import PROFILES, generate
from recsys.features import load_dataset_spec
from recsys.hashing import hash64_str
from recsys.metrics import auc, logloss

ROWS = 20_000
SPLITS = ("train", "valid", "test")


def read_split(folder: Path, split: str) -> pa.Table:
    spec = load_dataset_spec(folder)
    return pa.concat_tables([pq.read_table(folder / f) for f in spec.splits[split].files])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    generate(out, rows=ROWS, profile="small", seed=0, progress=False)
    return out


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4096 rows, so that a small dataset spans several blocks and chunks."""
    monkeypatch.setattr(synthetic, "BLOCK_ROWS", 4096)


def test_schema_and_spec(small: Path) -> None:
    spec = load_dataset_spec(small)
    profile = PROFILES["small"]
    assert spec.source == "synthetic"
    assert [f.name for f in spec.dense_fields] == [f"I{i + 1}" for i in range(profile.num_dense)]
    assert [f.name for f in spec.sparse_fields] == [f"C{i + 1}" for i in range(len(profile.cardinalities))]
    assert all(f.transform == "slog1p" for f in spec.dense_fields)
    assert {k: spec.synthetic[k] for k in ("profile", "rows", "seed", "scale")} == {"profile": "small", "rows": ROWS, "seed": 0, "scale": 1.0}
    assert sum(s.rows for s in spec.splits.values()) == ROWS
    assert abs(spec.splits["train"].rows / ROWS - 0.8) < 0.02
    table = read_split(small, "train")
    expected = ["label", *(f.name for f in spec.dense_fields)]
    for f in spec.sparse_fields:
        expected += [f.name, f"{f.name}__id"]
    assert table.column_names == [*expected, "__prob"]
    for name in table.column_names:
        want = pa.int64() if name.startswith("C") else pa.float32()
        assert table.schema.field(name).type == want, name
    labels = table.column("label").to_numpy()
    assert set(np.unique(labels)) == {0.0, 1.0}
    probs = table.column("__prob").to_numpy()
    assert np.all((probs > 0) & (probs < 1))
    dense = np.stack([table.column(f.name).to_numpy() for f in spec.dense_fields])
    assert np.all(dense >= 0) and np.any(dense == 0) and np.all(np.isfinite(dense))


def test_label_rate_and_oracle_range(small: Path) -> None:
    spec = load_dataset_spec(small)
    rows = sum(s.rows for s in spec.splits.values())
    rate = sum(s.label_rate * s.rows for s in spec.splits.values()) / rows
    assert abs(rate - PROFILES["small"].target_ctr) < 0.015
    assert spec.has_oracle
    for split in spec.splits.values():
        assert split.oracle is not None
        assert 0.72 < split.oracle.auc < 0.85
        assert 0.3 < split.oracle.logloss < 0.5


def test_oracle_metrics_recomputed_from_probs(small: Path) -> None:
    spec = load_dataset_spec(small)
    for name in SPLITS:
        table = read_split(small, name)
        labels, probs = table.column("label").to_numpy(), table.column("__prob").to_numpy()
        split = spec.splits[name]
        assert split.rows == len(labels)
        assert split.label_rate == pytest.approx(labels.astype(np.float64).mean(), abs=1e-12)
        assert split.oracle is not None
        assert split.oracle.auc == pytest.approx(auc(labels, probs), abs=1e-12)
        assert split.oracle.logloss == pytest.approx(logloss(labels, probs), abs=1e-12)


def test_vocabularies_match_train_counts(small: Path) -> None:
    spec = load_dataset_spec(small)
    tables = {s: read_split(small, s) for s in SPLITS}
    for field in spec.sparse_fields:
        assert field.vocabulary is not None and field.cardinality is not None
        vocab = pq.read_table(small / field.vocabulary)
        ids, counts = vocab.column("id").to_numpy(), vocab.column("count").to_numpy()
        assert field.cardinality == len(ids) + 2 and field.num_distinct == len(ids)
        assert np.all(np.diff(counts) <= 0)
        ties = np.diff(counts) == 0
        assert np.all((ids[1:] > ids[:-1])[ties]), "equal counts are ordered by id"
        train_ids = tables["train"].column(f"{field.name}__id").to_numpy()
        uniq, train_counts = np.unique(train_ids, return_counts=True)
        order = np.argsort(ids)
        np.testing.assert_array_equal(ids[order], uniq)
        np.testing.assert_array_equal(counts[order], train_counts)
        position = {int(v): i + 2 for i, v in enumerate(ids)}
        for table in tables.values():
            index = table.column(field.name).to_numpy()
            raw = table.column(f"{field.name}__id").to_numpy()
            expected = np.array([position.get(int(v), 1) for v in raw], np.int64)
            np.testing.assert_array_equal(index, expected)
        assert np.all(tables["train"].column(field.name).to_numpy() >= 2)


def test_min_count_maps_rare_train_values_to_oov(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "mc"
    spec = generate(out, rows=ROWS, profile="small", seed=0, progress=False, min_count=20)
    base = load_dataset_spec(small)
    assert spec.id_scheme.min_count == 20 and spec.synthetic["min_count"] == 20
    train, base_train = read_split(out, "train"), read_split(small, "train")
    np.testing.assert_array_equal(train.column("label").to_numpy(), base_train.column("label").to_numpy())
    assert spec.splits["test"].oracle == base.splits["test"].oracle, "the rows and the teacher do not depend on min_count"
    shrunk = 0
    for field, base_field in zip(spec.sparse_fields, base.sparse_fields):
        counts = pq.read_table(out / field.vocabulary).column("count").to_numpy()
        assert np.all(counts >= 20)
        assert field.num_distinct == base_field.num_distinct, "num_distinct counts every distinct train value"
        raw = train.column(f"{field.name}__id").to_numpy()
        uniq, n = np.unique(raw, return_counts=True)
        rare = np.isin(raw, uniq[n < 20])
        index = train.column(field.name).to_numpy()
        assert np.all(index[rare] == 1) and np.all(index[~rare] >= 2)
        assert field.cardinality == int(np.count_nonzero(n >= 20)) + 2
        shrunk += base_field.cardinality - field.cardinality
    assert shrunk > 0


def test_raw_ids_hash_value_strings(small: Path) -> None:
    vocab = pq.read_table(small / "vocab" / "C1.parquet")
    expected = {hash64_str(f"C1_{v}") for v in range(PROFILES["small"].cardinalities[0])}
    assert set(vocab.column("id").to_pylist()) == expected


def test_unseen_values_are_oov_in_valid_and_test(tmp_path: Path) -> None:
    out = tmp_path / "criteo"
    spec = generate(out, rows=5000, profile="criteo", seed=1, scale=0.01, progress=False)
    valid = read_split(out, "valid")
    big = max(spec.sparse_fields, key=lambda f: f.cardinality or 0)
    index = valid.column(big.name).to_numpy()
    assert np.any(index == 1) and np.any(index >= 2) and not np.any(index == 0)


def test_deterministic_bytes(tmp_path: Path, small_blocks: None) -> None:
    a = generate(tmp_path / "a" / "d", rows=ROWS, profile="small", seed=3, chunk_rows=8192, progress=False)
    b = generate(tmp_path / "b" / "d", rows=ROWS, profile="small", seed=3, chunk_rows=8192, progress=False)
    assert a == b
    assert folder_bytes(tmp_path / "a" / "d") == folder_bytes(tmp_path / "b" / "d")
    c = generate(tmp_path / "c" / "d", rows=ROWS, profile="small", seed=4, chunk_rows=8192, progress=False)
    assert not read_split(tmp_path / "c" / "d", "train").equals(read_split(tmp_path / "a" / "d", "train"))
    assert c.splits["train"].oracle != a.splits["train"].oracle


def test_independent_of_chunk_rows(tmp_path: Path, small_blocks: None) -> None:
    one = generate(tmp_path / "one" / "d", rows=ROWS, profile="small", seed=5, chunk_rows=4096, progress=False)
    three = generate(tmp_path / "three" / "d", rows=ROWS, profile="small", seed=5, chunk_rows=12_288, rows_per_file=7000, progress=False)
    assert one.fields == three.fields and one.synthetic == three.synthetic
    assert len(three.splits["train"].files) > 1
    for split in SPLITS:
        assert one.splits[split].oracle == three.splits[split].oracle
        assert read_split(tmp_path / "one" / "d", split).equals(read_split(tmp_path / "three" / "d", split))
    for f in one.sparse_fields:
        assert f.vocabulary is not None
        a = pq.read_table(tmp_path / "one" / "d" / f.vocabulary)
        assert a.equals(pq.read_table(tmp_path / "three" / "d" / f.vocabulary))


@pytest.mark.parametrize("id_scheme", ["index", "raw"])
def test_batch_reader_reads_it(small: Path, id_scheme: str) -> None:
    spec = load_dataset_spec(small)
    layout = BatchLayout.from_spec(spec, id_scheme)  # type: ignore[arg-type]
    batches = list(ParquetBatchReader(small, "valid", layout, batch_size=512))
    assert sum(len(b) for b in batches) == spec.splits["valid"].rows
    table = read_split(small, "valid")
    first = batches[0]
    assert first.dense_features.shape == (512, len(spec.dense_fields))
    assert first.probs is not None
    np.testing.assert_array_equal(first.probs.numpy(), table.column("__prob").to_numpy()[:512])
    jagged = first.sparse_features.to_dict()
    for f in spec.sparse_fields:
        column = f.name if id_scheme == "index" else f"{f.name}__id"
        np.testing.assert_array_equal(jagged[f.name].values().numpy(), table.column(column).to_numpy()[:512])


def test_criteo_profile_shape(tmp_path: Path) -> None:
    spec = generate(tmp_path / "c", rows=8000, profile="criteo", seed=0, scale=0.01, progress=False)
    profile = PROFILES["criteo"]
    assert [f.name for f in spec.dense_fields] == [f"I{i}" for i in range(1, 14)]
    assert [f.name for f in spec.sparse_fields] == [f"C{i}" for i in range(1, 27)]
    cards = spec.synthetic["teacher"]["cardinalities"]
    assert cards["C3"] == round(profile.cardinalities[2] * 0.01) and cards["C9"] == profile.cardinalities[8]
    assert min(profile.cardinalities) <= 4 and max(profile.cardinalities) >= 500_000
    assert 0.74 < spec.splits["train"].oracle.auc < 0.86  # type: ignore[union-attr]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no dataset"):
        generate(other, rows=100, profile="small", progress=False, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "d"
    generate(out, rows=1000, profile="small", seed=0, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate(out, rows=2000, profile="small", progress=False)
    assert load_dataset_spec(out).synthetic["rows"] == 1000  # type: ignore[index]
    generate(out, rows=2000, profile="small", progress=False, overwrite=True)
    assert load_dataset_spec(out).synthetic["rows"] == 2000  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "other"]


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "d"
    generate(out, rows=1000, profile="small", seed=0, progress=False)
    before = folder_bytes(out)

    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_splits", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(out, rows=3000, profile="small", progress=False, overwrite=True)
    assert folder_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "nope"}, "unknown profile"),
        ({"rows": 0}, "rows"),
        ({"split": (0.5, 0.2, 0.2)}, "split"),
        ({"split": (0.0, 0.5, 0.5)}, "train fraction"),
        ({"scale": 0.0}, "scale"),
        ({"min_count": 0}, "min_count"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"rows": 100, "profile": "small", "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()


def test_progress_bar_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path / "d", rows=500, profile="small", progress=True)
    captured = capsys.readouterr()
    assert "synth" in captured.err and captured.out == ""


def test_custom_profile_and_tiny_dataset(tmp_path: Path) -> None:
    profile = PROFILES["small"].model_copy(update={"cardinalities": [2, 5, 9], "num_dense": 0, "interaction_pairs": 1})
    spec = generate(tmp_path / "d", rows=3, profile=profile, seed=0, progress=False)
    assert spec.synthetic is not None and spec.synthetic["profile"] == "custom"
    assert [f.name for f in spec.fields] == ["C1", "C2", "C3"]
    assert sum(s.rows for s in spec.splits.values()) == 3
    for name, split in spec.splits.items():
        assert len(split.files) == 1
        table = read_split(tmp_path / "d", name)
        assert table.num_rows == split.rows and "__prob" in table.column_names
    empty = [s for s in spec.splits.values() if s.rows == 0]
    assert all(s.oracle is None and s.label_rate == 0.0 for s in empty)


def test_teacher_is_deterministic_and_calibrated() -> None:
    a = synthetic.build_teacher(PROFILES["small"], seed=7)
    b = synthetic.build_teacher(PROFILES["small"], seed=7)
    assert (a.alpha, a.bias, a.pairs) == (b.alpha, b.bias, b.pairs)
    rng = np.random.default_rng(0)
    ranks, dense = a.ranks(rng, 50_000), a.dense(rng, 50_000)
    probs = 1 / (1 + np.exp(-a.logits(ranks, dense)))
    assert abs(probs.mean() - PROFILES["small"].target_ctr) < 0.01
    assert all(f.latent.shape[0] in (1, f.head + 1) for f in a.sparse)


def test_small_real_profile_shape(tmp_path: Path) -> None:
    """``small_real``: about 10 sparse fields, a few thousand values in all, steep Zipf popularity."""
    spec = generate(tmp_path / "s", rows=20_000, profile="small_real", seed=0, progress=False)
    sparse = spec.sparse_fields
    assert [f.name for f in sparse] == [f"C{i}" for i in range(1, 11)]
    assert len(spec.dense_fields) == 2
    assert sum(PROFILES["small_real"].cardinalities) == 4468
    assert 2000 < sum(int(f.cardinality or 0) for f in sparse) <= 4468 + 2 * len(sparse)
    counts = pq.read_table(tmp_path / "s" / sparse[-1].vocabulary).column("count").to_numpy()  # type: ignore[operator]
    assert (np.diff(counts) <= 0).all()
    assert counts[:15].sum() > 0.25 * counts.sum(), "the top 1% of the largest field's values carry a quarter of its rows"
    assert 0.72 < spec.splits["test"].oracle.auc < 0.84  # type: ignore[union-attr]
    assert [f.name for f in sparse if f.multi_valued] == ["C8"]
    train = read_split(tmp_path / "s", "train")
    lengths = pa.compute.list_value_length(train.column("C8")).to_numpy()
    assert lengths.min() == 1 and lengths.max() == 4 and 2.3 < lengths.mean() < 2.7
    vocab = pq.read_table(tmp_path / "s" / sparse[7].vocabulary).column("count").to_numpy()  # type: ignore[operator]
    flat = pa.compute.list_flatten(train.column("C8")).to_numpy()
    assert vocab.sum() == np.count_nonzero(flat >= 2) and lengths.sum() == len(flat), "bags' values are all counted"
    assert np.array_equal(np.bincount(flat[flat >= 2] - 2, minlength=len(vocab)), vocab)


def test_a_killed_generators_temporary_folder_is_removed_by_the_next_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = tmp_path / f".d.tmp-{dead.stdout.strip()}"  # what a SIGKILL mid-run leaves (the same writer as convert's)
    (stale / "train").mkdir(parents=True)
    generate(tmp_path / "d", rows=1000, profile="small", seed=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert f"removed stale temporary folder {stale} (" in capsys.readouterr().err
