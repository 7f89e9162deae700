"""``dataset.json``: the contract between data, models and serving.

A converted or generated dataset is a folder::

    dataset.json            this contract (``DatasetSpec``)
    vocab/<field>.parquet   per sparse field: ``id`` (int64 raw id), ``count``; row r is index r + 2
    train/part-00000.parquet, valid/..., test/...

Parquet columns: ``label`` (float32, 0/1); each dense field (float32, already transformed);
each sparse field ``<name>`` (int64 vocabulary index) and ``<name>__id`` (int64 raw id, see
``recsys.hashing``); multi-valued sparse fields hold lists of those, and weighted ones a
``<name>__w`` list of float32. Synthetic data also has ``__prob`` (the true click probability).

Index scheme of every sparse field: 0 = missing value, 1 = out of vocabulary (seen fewer than
``min_count`` times in train, or never), 2.. = vocabulary values by decreasing train frequency.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from recsys.storage import StoragePath, location

FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
MISSING_INDEX = 0
OOV_INDEX = 1
NUM_RESERVED = 2
LABEL_COLUMN = "label"
PROB_COLUMN = "__prob"


def id_column(name: str) -> str:
    """Column holding the raw 64-bit ids of sparse field ``name``."""
    return f"{name}__id"


def weight_column(name: str) -> str:
    """Column holding the per-value weights of a weighted sparse field."""
    return f"{name}__w"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransformParams(_Strict):
    """Train statistics of a dense transform (see ``recsys.data.transforms``)."""

    mean: float | None = Field(None, description="standardize: train mean")
    std: float | None = Field(None, description="standardize: train standard deviation (1 if constant)")
    edges: list[float] | None = Field(None, description="quantile: bucket b holds edges[b-1] <= x < edges[b]")


class FieldSpec(_Strict):
    """One input field."""

    name: str
    kind: Literal["dense", "sparse"]
    cardinality: int | None = Field(None, description="sparse: rows of a collisionless table (vocabulary + 2 reserved)")
    vocabulary: str | None = Field(None, description="sparse: vocabulary file, relative to the dataset folder")
    num_distinct: int | None = Field(None, description="sparse: distinct raw values seen in train")
    multi_valued: bool = False
    weighted: bool = False
    transform: str | None = Field(None, description="how raw numbers were transformed: slog1p | standardize | none (dense), quantile (sparse)")
    transform_params: TransformParams | None = Field(None, description="the transform's train statistics")


class IdScheme(_Strict):
    """How raw categorical values became ids and indices."""

    hash: str = "fnv1a64+fmix64"
    missing: str = "empty string; index 0, id = hash of ''"
    oov_index: int = OOV_INDEX
    missing_index: int = MISSING_INDEX
    min_count: int = 1
    vocabulary_from: str = "train"


class OracleMetrics(_Strict):
    """Metrics of the true click probabilities: the best any model can do."""

    auc: float
    logloss: float


class SplitSpec(_Strict):
    rows: int
    files: list[str]
    label_rate: float
    oracle: OracleMetrics | None = None


class DatasetSpec(_Strict):
    """The parsed ``dataset.json``."""

    format_version: int = FORMAT_VERSION
    name: str
    source: str = Field(description="criteo | avazu | libfm | csv | synthetic")
    fields: list[FieldSpec]
    id_scheme: IdScheme = IdScheme()
    splits: dict[str, SplitSpec]
    bad_rows: int = 0
    bad_rows_by_reason: dict[str, int] = {}
    synthetic: dict | None = Field(None, description="generator settings, for synthetic data")

    @property
    def dense_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "dense"]

    @property
    def sparse_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "sparse"]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"unknown field '{name}'; fields: {', '.join(f.name for f in self.fields)}")

    @property
    def has_oracle(self) -> bool:
        return all(s.oracle is not None for s in self.splits.values())


def load_dataset_spec(path: str | os.PathLike | StoragePath) -> DatasetSpec:
    """Read ``dataset.json`` from a dataset folder (or the file itself), local or a URI."""
    p = location(path)
    if p.is_dir():
        p = p / DATASET_FILE
    if not p.exists():
        raise FileNotFoundError(f"{p}: no dataset.json here; convert data with `recsys data convert` or `recsys data synth`")
    try:
        return DatasetSpec.model_validate_json(p.read_text())
    except Exception as exc:
        raise ValueError(f"{p}: invalid dataset.json: {exc}") from exc


def save_dataset_spec(spec: DatasetSpec, folder: str | os.PathLike) -> Path:
    p = Path(folder) / DATASET_FILE
    p.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    return p
