"""Feast offline data into training: a point-in-time historical retrieval, as Parquet, to a dataset.

``historical_to_parquet`` runs ``FeatureStore.get_historical_features`` (the point-in-time join of
an entity/label table with feature views, over the repo's offline store) and writes the result
as one Parquet file (written beside, renamed at the end). ``parquet_to_dataset`` converts it
with the schema YAML of ``recsys data convert --format parquet`` (``recsys.data.schema``: label,
dense, sparse, drop), reading the file's record batches directly (typed and list columns kept).

Example:
    >>> historical_to_parquet("feature_repo", "impressions.parquet", ["user:age", "user:country"], "train.parquet")  # doctest: +SKIP
    >>> parquet_to_dataset("train.parquet", "schema.yaml", "data/from_feast")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.convert import convert
from recsys.features import DatasetSpec

TIMESTAMP = "event_timestamp"


def historical_to_parquet(repo: str | Path, entities: str | Path, features: Sequence[str], out: str | Path) -> Path:
    """Point-in-time join of the entity table ``entities`` (Parquet with ``event_timestamp``) with
    ``features`` (``view:feature`` references), written to ``out`` (Parquet), one row per entity row.

    Feast's file offline store keeps one row per (join keys, timestamp), so rows sharing both (two
    impressions of a user in the same second) would be merged: the retrieval runs on the distinct
    keys and is joined back to every row of the entity table, in its order.
    """
    import pandas as pd
    from feast import FeatureStore

    entities, out = Path(entities), Path(out)
    entity_df = pd.read_parquet(entities)
    if TIMESTAMP not in entity_df.columns:
        raise ValueError(f"{entities}: the entity table needs an '{TIMESTAMP}' column (the time of each row); got {list(entity_df.columns)}")
    if not features:
        raise ValueError("no features to retrieve; name them as view:feature")
    fs = FeatureStore(repo_path=str(repo))
    keys = []
    for ref in features:
        view = ref.split(":", 1)[0]
        keys += [c.name for c in fs.get_feature_view(view).entity_columns if c.name not in keys]
    missing = [k for k in keys if k not in entity_df.columns]
    if missing:
        raise ValueError(f"{entities}: the entity table lacks the join key column(s) {missing} of the requested feature views")
    entity_df[TIMESTAMP] = pd.to_datetime(entity_df[TIMESTAMP], utc=True)
    query = entity_df[keys + [TIMESTAMP]].drop_duplicates(ignore_index=True)
    found = fs.get_historical_features(entity_df=query, features=list(features)).to_df()
    found[TIMESTAMP] = pd.to_datetime(found[TIMESTAMP], utc=True)
    joined = entity_df.merge(found, on=keys + [TIMESTAMP], how="left", validate="many_to_one")
    if len(joined) != len(entity_df):
        raise RuntimeError(f"{entities}: the retrieval returned {len(joined)} rows for {len(entity_df)} entity rows")
    table = pa.Table.from_pandas(joined, preserve_index=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


def parquet_to_dataset(
    parquet: str | Path,
    schema: str | Path,
    out: str | Path,
    *,
    min_count: int = 1,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetSpec:
    """Convert a retrieval's Parquet into a dataset folder with the Parquet/CSV ``schema`` (the
    other arguments are ``recsys data convert``'s)."""
    parquet = Path(parquet)
    if not parquet.is_file():
        raise FileNotFoundError(f"{parquet}: no such Parquet file")
    return convert(
        "parquet", parquet, Path(out), schema_path=Path(schema), min_count=min_count, split=split, seed=seed, overwrite=overwrite, progress=progress
    )
