"""Dense transforms per schema column (slog1p, standardize, none, quantile buckets): recorded, applied, served alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data.convert import ConversionError, convert
from recsys.data.transforms import DenseStats, TransformSpec, bucket_ids
from recsys.features import NUM_RESERVED, id_column, load_dataset_spec
from recsys.hashing import hash64_strings

SCHEMA = """label: y
dense: [price, age, score, count]
sparse: [user]
transforms: {price: standardize, age: {quantile: 4}, score: none}
"""


def write_case(folder: Path, n: int = 2000) -> tuple[Path, Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    cols = {
        "price": np.round(rng.lognormal(3, 1, n), 2),
        "age": rng.integers(18, 80, n).astype(np.float64),
        "score": np.round(rng.normal(0, 5, n), 3),
        "count": rng.integers(0, 1000, n).astype(np.float64),
    }
    for c in cols.values():
        c[rng.random(n) < 0.05] = np.nan  # missing
    user = rng.integers(0, 30, n)
    logit = 0.02 * (np.nan_to_num(cols["age"], nan=50) - 50) + np.where(user < 10, 1.0, -1.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    text = lambda v: "" if np.isnan(v) else repr(float(v))  # noqa: E731
    lines = ["y,price,age,score,count,user"]
    lines += [",".join([str(y[i]), *(text(cols[c][i]) for c in cols), f"u{user[i]}"]) for i in range(n)]
    (folder / "a.csv").write_text("\n".join(lines) + "\n")
    (folder / "schema.yaml").write_text(SCHEMA)
    return folder / "a.csv", folder / "schema.yaml", cols


def split_rows(folder: Path, split: str) -> pa.Table:
    spec = load_dataset_spec(folder)
    return pa.concat_tables([pq.read_table(folder / f) for f in spec.splits[split].files])


def test_transforms_use_train_statistics_and_are_recorded(tmp_path: Path) -> None:
    src, schema, cols = write_case(tmp_path)
    spec = convert("csv", src, tmp_path / "ds", schema_path=schema, progress=False, split_by="order")
    train_n = spec.splits["train"].rows
    assert [(f.name, f.kind, f.transform) for f in spec.fields] == [
        ("price", "dense", "standardize"),
        ("score", "dense", "none"),
        ("count", "dense", "slog1p"),
        ("user", "sparse", None),
        ("age", "sparse", "quantile"),
    ]
    train_price = cols["price"][:train_n]
    params = spec.field("price").transform_params
    assert params is not None
    assert params.mean == pytest.approx(np.nanmean(train_price), rel=1e-12)
    assert params.std == pytest.approx(np.nanstd(train_price), rel=1e-9)
    test = split_rows(tmp_path / "ds", "test")
    raw = cols["price"][train_n + spec.splits["valid"].rows :]
    want = np.nan_to_num((raw - params.mean) / params.std, nan=0.0).astype(np.float32)
    np.testing.assert_array_equal(test.column("price").to_numpy(), want)
    np.testing.assert_array_equal(test.column("score").to_numpy(), np.nan_to_num(cols["score"][-len(raw) :], nan=0.0).astype(np.float32))
    age = spec.field("age")
    assert age.transform_params is not None and age.transform_params.edges is not None
    edges = age.transform_params.edges
    assert len(edges) == 3 and age.cardinality == 4 + NUM_RESERVED and not age.multi_valued
    np.testing.assert_allclose(edges, np.nanquantile(cols["age"][:train_n], [0.25, 0.5, 0.75]), atol=1.0)
    got = test.column("age").to_numpy()
    buckets = np.searchsorted(edges, np.nan_to_num(cols["age"][-len(raw) :]), side="right")
    np.testing.assert_array_equal(got, np.where(np.isnan(cols["age"][-len(raw) :]), 0, buckets + NUM_RESERVED))
    np.testing.assert_array_equal(test.column(id_column("age")).to_numpy(), bucket_ids(cols["age"][-len(raw) :], edges))
    vocab = pq.read_table(tmp_path / "ds" / "vocab" / "age.parquet")
    assert vocab.column("id").to_pylist() == hash64_strings(["0", "1", "2", "3"]).tolist()
    train_buckets = np.searchsorted(edges, cols["age"][:train_n][~np.isnan(cols["age"][:train_n])], side="right")
    assert vocab.column("count").to_pylist() == np.bincount(train_buckets, minlength=4).tolist()


def test_bad_transforms_in_the_schema_are_named(tmp_path: Path) -> None:
    src, _, _ = write_case(tmp_path, 50)
    cases = {
        "transforms: {user: standardize}": ("transforms.user", "apply to columns listed under 'dense'"),
        "transforms: {price: log}": ("transforms.price", "unknown transform 'log'"),
        "transforms: {price: {quantile: 1}}": ("transforms.price", "N >= 2 buckets"),
    }
    base = "label: y\ndense: [price, age, score, count]\nsparse: [user]\n"
    for line, (field, message) in cases.items():
        (tmp_path / "s.yaml").write_text(base + line + "\n")
        with pytest.raises(ConversionError, match=message) as info:
            convert("csv", src, tmp_path / "out", schema_path=tmp_path / "s.yaml", progress=False)
        assert info.value.field == field and info.value.file == str(tmp_path / "s.yaml")


def test_dense_stats_are_exact_and_the_sample_uniform() -> None:
    rng = np.random.default_rng(3)
    stats = DenseStats("x", 0, sample=True)
    chunks = [rng.normal(5, 2, 50_000) for _ in range(12)]
    for c in chunks:
        stats.add(c)
    x = np.concatenate(chunks)
    params = stats.params(TransformSpec("standardize"))
    assert params.mean == pytest.approx(x.mean(), rel=1e-12) and params.std == pytest.approx(x.std(), rel=1e-9)
    edges = stats.params(TransformSpec("quantile", 10)).edges
    assert edges is not None and len(edges) == 9
    np.testing.assert_allclose(edges, np.quantile(x, np.linspace(0.1, 0.9, 9)), atol=0.05)


def test_served_requests_are_transformed_like_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train on the converted CSV, export, and encode the raw test rows through the serving encoder."""
    from recsys.config import load_config
    from recsys.export import export_run, load_artifact
    from recsys.serving.encode import RequestError
    from recsys.serving.store import Store
    from recsys.training.run import train_experiment

    src, schema, cols = write_case(tmp_path)
    spec = convert("csv", src, tmp_path / "ds", schema_path=schema, progress=False, split_by="order")
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(
        root / "configs/quickstart.yaml",
        [
            f"data.path={tmp_path / 'ds'}",
            "tracking.enabled=false",
            "training.epochs=1",
            "training.batch_size=256",
            "training.max_steps_per_epoch=4",
            "training.progress=false",
        ],
    )
    train_experiment(cfg, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "art", dtype="fp32")
    store = Store(load_artifact(tmp_path / "art"))
    test = split_rows(tmp_path / "ds", "test")
    start = spec.splits["train"].rows + spec.splits["valid"].rows
    dense_rows = [{c: (None if np.isnan(cols[c][i]) else float(cols[c][i])) for c in cols} for i in range(start, start + 200)]
    dense = store.encoder.dense_tensor(dense_rows).numpy()
    for j, name in enumerate(store.encoder.dense):
        np.testing.assert_array_equal(dense[:, j], test.column(name).to_numpy()[:200])
    sparse = store.encoder.with_buckets([{}] * 200, dense_rows)
    kjt = store.encoder.kjt(sparse)
    np.testing.assert_array_equal(kjt["age"].values().numpy(), test.column("age").to_numpy()[:200])  # missing: index 0
    requests = [{"dense": d} for d in dense_rows]
    np.testing.assert_array_equal(store.score(requests), store.score_batch(torch.from_numpy(dense), kjt))
    moved = [{"dense": {**d, "age": (d["age"] or 0) + 1000.0}} for d in dense_rows[:5]]  # above every edge: last bucket
    last = store.encoder.kjt(store.encoder.with_buckets([{}] * 5, [m["dense"] for m in moved]))["age"].values()
    assert last.tolist() == [NUM_RESERVED + len(edges_of(spec, "age"))] * 5
    with pytest.raises(RequestError, match="dense feature 'age': expected a number"):
        store.score([{"dense": {"age": "old"}}])


def edges_of(spec, name: str) -> list[float]:  # type: ignore[no-untyped-def]
    params = spec.field(name).transform_params
    assert params is not None and params.edges is not None
    return params.edges
