"""Feast offline data into training: a point-in-time retrieval over the file offline store, exported
as Parquet by `recsys feast training-data` and converted into a dataset that the batch reader reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.cli import main as recsys_main
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.features import NUM_RESERVED, load_dataset_spec

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFINITIONS = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, String

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
stats_source = FileSource(name="user_stats_source", path="data/user_stats.parquet", timestamp_field="event_timestamp")
user_stats = FeatureView(name="user_stats", entities=[user], ttl=timedelta(days=30), source=stats_source,
                         schema=[Field(name="age", dtype=Float32), Field(name="country", dtype=String)])
"""


def _repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: offline\nprovider: local\nregistry: data/registry.db\nonline_store: {type: sqlite, path: data/online.db}\n"
        "offline_store: {type: file}\nentity_key_serialization_version: 3\n"
    )
    (repo / "features.py").write_text(DEFINITIONS)
    users = [f"u{i}" for i in range(20)]
    stats = pd.DataFrame(
        {  # each user's age changes at T0 + 10 days, the country stays
            "user_id": users * 2,
            "age": [20.0 + i for i in range(20)] + [40.0 + i for i in range(20)],
            "country": [f"c{i % 3}" for i in range(20)] * 2,
            "event_timestamp": [T0] * 20 + [T0 + timedelta(days=10)] * 20,
        }
    )
    stats.to_parquet(repo / "data/user_stats.parquet")
    return repo


def test_historical_retrieval_becomes_a_training_dataset(tmp_path):
    from tests.feast_support import apply_in_process

    repo = _repo(tmp_path)
    apply_in_process(repo)
    rng = np.random.default_rng(0)
    n = 200
    user = rng.integers(0, 20, n)
    late = rng.random(n) < 0.5  # impressions after the age change see the new age
    entities = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in user],
            "item": [f"item{k}" for k in rng.integers(0, 15, n)],
            "label": rng.integers(0, 2, n),
            "event_timestamp": [T0 + timedelta(days=15 if x else 5) for x in late],
        }
    )
    entities.to_parquet(tmp_path / "impressions.parquet")
    schema = tmp_path / "schema.yaml"
    schema.write_text("label: label\ndense: [age]\nsparse: [item, country]\ndrop: [user_id, event_timestamp]\n")
    out, parquet = tmp_path / "dataset", tmp_path / "train.parquet"
    code = recsys_main(
        [
            "feast",
            "training-data",
            "--repo",
            str(repo),
            "--entities",
            str(tmp_path / "impressions.parquet"),
            "--features",
            "user_stats:age,user_stats:country",
            "--parquet",
            str(parquet),
            "--schema",
            str(schema),
            "--out",
            str(out),
            "--split",
            "1,0,0",
        ]
    )
    assert code == 0

    got = pq.read_table(parquet).to_pandas()
    assert len(got) == n and {"age", "country", "item", "label"} <= set(got.columns)
    want_age = dict(zip(zip([f"u{u}" for u in user], entities["event_timestamp"]), np.where(late, 40.0 + user, 20.0 + user)))
    for row in got.itertuples():
        assert row.age == want_age[(row.user_id, row.event_timestamp)]  # the point-in-time value
        assert row.country == f"c{int(row.user_id[1:]) % 3}"

    spec = load_dataset_spec(out)
    assert spec.splits["train"].rows == n
    assert [f.name for f in spec.sparse_fields] == ["item", "country"] and [f.name for f in spec.dense_fields] == ["age"]
    assert spec.splits["train"].label_rate == pytest.approx(entities["label"].mean())
    table = pq.read_table(out / "train")
    np.testing.assert_allclose(np.sort(table.column("age").to_numpy()), np.sort(np.log1p(got["age"].to_numpy())), rtol=1e-6)
    assert {f.name: f.cardinality for f in spec.sparse_fields}["country"] == 3 + NUM_RESERVED
    batches = list(ParquetBatchReader(out, "train", BatchLayout.from_spec(spec, "index"), 64))  # what training reads
    assert sum(len(b.labels) for b in batches) == n
    assert batches[0].sparse_features.keys() == ["item", "country"]


def test_entity_table_without_timestamps_is_refused(tmp_path):
    from recsys.data.feast_offline import historical_to_parquet

    pd.DataFrame({"user_id": ["u1"]}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(ValueError, match=r"e.parquet: the entity table needs an 'event_timestamp' column"):
        historical_to_parquet(tmp_path, tmp_path / "e.parquet", ["user_stats:age"], tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()
