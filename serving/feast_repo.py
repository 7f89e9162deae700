"""``recsys feast init``: a Feast repo (feature_store.yaml, definitions, empty sources) for an artifact.

Per sparse field ``F``: an entity ``F`` (join key ``F``, string values), a file source holding no
rows (the schema only) and a feature view ``F`` with ``F_embedding: Array(Float32)``. The online
store is ours (vectors from the compressed table) or Feast's sqlite or Redis store, to be filled
by ``recsys feast materialize``. The repo is written into a temporary folder and renamed at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recsys.serving.feast_store import FEATURE_SUFFIX, STORE_TYPE
from recsys.serving.store import Store

OnlineKind = Literal["recsys", "sqlite", "redis"]
DEFINITIONS = "features.py"
HEADER = '''"""Feast definitions of the sparse fields of a recsys artifact (written by `recsys feast init`)."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32
'''
BLOCK = """
entity_{i} = Entity(name={name!r}, join_keys=[{name!r}], value_type=ValueType.STRING)
source_{i} = FileSource(name={source!r}, path={path!r}, timestamp_field="event_timestamp")
view_{i} = FeatureView(
    name={name!r}, entities=[entity_{i}], ttl=timedelta(0), online=True, source=source_{i},
    schema=[Field(name={feature!r}, dtype=Array(Float32), vector_length={dim})],
)
"""


def artifact_fields(store: Store) -> list[tuple[str, int]]:
    """``(sparse field, dimension)`` of a loaded (verified) artifact."""
    return [(name, store.widths[name]) for name in store.features]


def online_store_block(kind: OnlineKind, artifact: str, redis: str, poll_interval_s: float, tracking_uri: str | None) -> dict:
    """The ``online_store`` block of ``feature_store.yaml``."""
    if kind == "recsys":
        block = {"type": STORE_TYPE, "artifact": artifact, "poll_interval_s": poll_interval_s}
        return block | ({"tracking_uri": tracking_uri} if tracking_uri else {})
    if kind == "sqlite":
        return {"type": "sqlite", "path": "data/online.db"}
    return {"type": "redis", "connection_string": redis}


def _empty_source(path: Path, field: str) -> None:
    schema = pa.schema([(field, pa.string()), (field + FEATURE_SUFFIX, pa.list_(pa.float32())), ("event_timestamp", pa.timestamp("us", tz="UTC"))])
    pq.write_table(schema.empty_table(), path)


def init_repo(
    artifact: str,
    out: Path,
    fields: list[tuple[str, int]],
    online: OnlineKind = "recsys",
    project: str = "recsys",
    redis: str = "127.0.0.1:6379",
    poll_interval_s: float = 30.0,
    tracking_uri: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the repo at ``out`` for ``fields`` (see ``artifact_fields``); returns ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if not project.isidentifier():
        raise ValueError(f"--project {project!r}: Feast project names are letters, digits and underscores")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / "data" / "sources").mkdir(parents=True)
        config = {
            "project": project,
            "provider": "local",
            "registry": "data/registry.db",
            "online_store": online_store_block(online, artifact, redis, poll_interval_s, tracking_uri),
            "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3,
        }
        (tmp / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        blocks = []
        for i, (name, dim) in enumerate(fields):
            path = f"data/sources/field_{i}.parquet"
            _empty_source(tmp / path, name)
            blocks.append(BLOCK.format(i=i, name=name, source=f"{name}_source", path=path, feature=name + FEATURE_SUFFIX, dim=dim))
        (tmp / DEFINITIONS).write_text(HEADER + "".join(blocks))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
