"""recsys.storage against a real S3 API (moto's server on 127.0.0.1) and the local filesystem."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features import load_dataset_spec
from recsys.storage import (
    StoragePath,
    append_text,
    is_uri,
    location,
    published,
    read_parquet,
    remove,
)
from tests.s3_server import BUCKET, s3_server  # noqa: F401  (fixture)


@pytest.fixture
def root(s3_server) -> StoragePath:  # noqa: F811
    return StoragePath(f"s3://{BUCKET}/unit-{uuid.uuid4().hex[:8]}")


def test_paths_stay_pathlib_and_uris_become_storage_paths(tmp_path):
    assert location(str(tmp_path)) == tmp_path and isinstance(location("runs/x"), Path)
    assert location(f"file://{tmp_path}") == tmp_path
    assert not is_uri("runs/x") and not is_uri(f"file://{tmp_path}") and is_uri("s3://b/k") and is_uri("gs://b/k")
    with pytest.raises(ValueError, match="names no bucket"):
        StoragePath("s3://")


def test_object_round_trip_listing_and_delete(root):
    f = root / "a" / "b.json"
    assert (f.name, f.suffix, str(f.parent), str(f.with_suffix(".txt"))) == ("b.json", ".json", f"{root}/a", f"{root}/a/b.txt")
    assert not f.exists()
    f.write_text('{"x": 1}')
    (root / "a" / "c" / "d.bin").write_bytes(b"\0\1")
    assert f.is_file() and not f.is_dir() and (root / "a").is_dir() and f.read_text() == '{"x": 1}'
    assert root.files() == ["a/b.json", "a/c/d.bin"]
    assert [p.name for p in root.glob("a/*/*.bin")] == ["d.bin"] and [p.name for p in root.glob("a/*.json")] == ["b.json"]
    append_text(root / "log.jsonl", "1\n")
    append_text(root / "log.jsonl", "2\n")
    assert (root / "log.jsonl").read_text() == "1\n2\n"
    with pytest.raises(FileNotFoundError, match="no such file"):
        (root / "missing").read_bytes()
    remove(root / "a")
    assert root.files() == ["log.jsonl"]
    (root / "log.jsonl").unlink()
    (root / "log.jsonl").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "log.jsonl").unlink()


def test_parquet_reads_the_same_from_s3_and_disk(root, tmp_path):
    table = pa.table({"x": [1, 2, 3], "y": [0.5, 1.5, 2.5]})
    pq.write_table(table, tmp_path / "t.parquet")
    (root / "t.parquet").write_bytes((tmp_path / "t.parquet").read_bytes())
    assert read_parquet(root / "t.parquet", ["y"]).equals(read_parquet(tmp_path / "t.parquet", ["y"]))


def test_publish_writes_the_marker_last_and_refuses_to_clobber(root):
    dest = root / "ds"
    with published(str(dest), "dataset.json") as local:
        (local / "train").mkdir(parents=True)
        (local / "train" / "part-0.parquet").write_bytes(b"rows")
        (local / "dataset.json").write_text("{}")
    assert dest.files() == ["dataset.json", "train/part-0.parquet"]
    assert not any(".tmp-" in p for p in root.files())  # the temporary prefix is gone
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        with published(str(dest), "dataset.json"):
            pass
    with pytest.raises(RuntimeError, match="boom"), published(str(dest), "dataset.json", overwrite=True) as local:
        local.mkdir()
        (local / "dataset.json").write_text('{"new": 1}')
        raise RuntimeError("boom")
    assert (dest / "dataset.json").read_text() == "{}"  # a failed build leaves the published folder alone
    with published(str(dest), "dataset.json", overwrite=True) as local:
        local.mkdir()
        (local / "dataset.json").write_text('{"new": 1}')
    assert dest.files() == ["dataset.json"]  # replaced: the old part is gone
    (root / "junk" / "x").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="holds no dataset.json"):
        with published(str(root / "junk"), "dataset.json", overwrite=True):
            pass


def test_a_prefix_without_dataset_json_is_refused(root):
    (root / "half" / "train" / "part-00000.parquet").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=rf"{root}/half/dataset.json: no dataset.json here"):
        load_dataset_spec(str(root / "half"))
