"""The Feast repo writer and the values-file reader of `recsys feast materialize` (no artifact needed)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from feast import Entity, FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Value
from feast.types import Array, Float32

from recsys.serving.feast_materialize import ValuesFileError, read_values
from recsys.serving.feast_repo import init_repo
from recsys.serving.feast_store import STORE_TYPE, FeastViewError, entity_value, float_list_values

FIELDS = [("C1", 16), ("odd name", 8)]


def test_init_repo_writes_config_definitions_and_empty_sources(tmp_path: Path) -> None:
    repo = init_repo("/art", tmp_path / "repo", FIELDS, poll_interval_s=5)
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["online_store"] == {"type": STORE_TYPE, "artifact": "/art", "poll_interval_s": 5}
    assert config["registry"] == "data/registry.db" and config["offline_store"] == {"type": "file"}
    ns = runpy.run_path(str(repo / "features.py"))
    views = {v.name: v for v in ns.values() if isinstance(v, FeatureView)}
    assert sorted(views) == ["C1", "odd name"]
    assert [e.join_key for e in ns.values() if isinstance(e, Entity)] == ["C1", "odd name"]
    feature = views["odd name"].features[0]
    assert (feature.name, feature.dtype, feature.vector_length) == ("odd name_embedding", Array(Float32), 8)
    source = pq.read_table(repo / "data/sources/field_0.parquet")
    assert source.num_rows == 0 and source.schema.names == ["C1", "C1_embedding", "event_timestamp"]
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # the temporary folder is gone

    with pytest.raises(FileExistsError, match="pass --overwrite"):
        init_repo("/art", repo, FIELDS)
    redis = init_repo("/art", tmp_path / "r", FIELDS, online="redis", redis="127.0.0.1:7000")
    assert yaml.safe_load((redis / "feature_store.yaml").read_text())["online_store"] == {"type": "redis", "connection_string": "127.0.0.1:7000"}
    with pytest.raises(ValueError, match="--project 'a-b'"):
        init_repo("/art", tmp_path / "p", FIELDS, project="a-b")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_values_are_read_in_batches_with_row_numbers(tmp_path: Path, kind: str) -> None:
    rows = [("C1", f"v{i}") for i in range(7)] + [("C2", "12")]
    if kind == "csv":
        path = tmp_path / "v.csv"
        path.write_text('"feature",value,extra\n' + "".join(f"{f},{v},x\n" for f, v in rows))
    else:
        path = tmp_path / "v.parquet"
        pq.write_table(pa.table({"value": [v for _, v in rows], "feature": [f for f, _ in rows]}), path)
    batches = list(read_values(path, batch_size=3))
    assert [b[0] for b in batches] == [1, 4, 7]
    assert [p for _, fs, vs in batches for p in zip(fs, vs)] == rows  # values stay strings ("12", not 12)

    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\nC1,a\n")
    with pytest.raises(ValuesFileError, match=r"bad.csv: missing column\(s\) \['feature'\]"):
        list(read_values(bad, 10))
    with pytest.raises(FileNotFoundError, match="no such values file"):
        list(read_values(tmp_path / "none.csv", 10))


def test_entity_values_are_strings_integers_or_missing() -> None:
    def key(**value: object) -> EntityKey:
        return EntityKey(join_keys=["C1"], entity_values=[Value(**value)])

    assert entity_value(key(string_val="a")) == "a"
    assert entity_value(key(int64_val=7)) == 7
    assert entity_value(key()) is None
    with pytest.raises(FeastViewError, match="entity 'C1': values must be strings or integers, got double_val"):
        entity_value(key(double_val=1.5))


@pytest.mark.parametrize("dim", [1, 16, 40])  # 40 floats: 160 bytes, two-byte lengths
def test_float_list_values_equal_the_messages_built_field_by_field(dim: int) -> None:
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((5, dim)).astype(np.float32)
    vectors[0, 0], vectors[1, -1] = -0.0, np.float32(3.4e38)
    got = float_list_values(vectors[:, :dim])
    assert got == [Value(float_list_val=FloatList(val=v)) for v in vectors.tolist()]
    np.testing.assert_array_equal(np.array([list(v.float_list_val.val) for v in got], np.float32), vectors)
    assert float_list_values(np.zeros((0, dim), np.float32)) == []


def test_a_mistyped_store_key_is_an_error_naming_the_key_and_file(tmp_path: Path) -> None:
    from feast import FeatureStore
    from feast.repo_config import FeastConfigError

    repo = init_repo("/art", tmp_path / "repo", FIELDS)
    config = repo / "feature_store.yaml"
    config.write_text(config.read_text().replace("poll_interval_s:", "poll_intervals:"))
    with pytest.raises(FeastConfigError, match=r"(?s)poll_intervals.*Extra inputs are not permitted.*feature_store.yaml"):
        _ = FeatureStore(repo_path=str(repo)).config.online_store
