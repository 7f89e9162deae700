"""The serving artifact: a folder described by ``manifest.json``, verified by checksums.

Layout (no pickle anywhere)::

    manifest.json            ``Manifest``: contract, method, model, dtype, sha256 of every file
    embedding.safetensors    the method's exported state (``ExportedMethod.state``); the weights
                             of stock-EBC tables listed in ``Manifest.tables`` are stored at the
                             artifact's dtype, as fbgemm ``IntNBitTableBatchedEmbeddingBags`` rows
                             (uint8; int8/int4 rows begin with a float16 scale and bias)
    dense.safetensors        the CTR model's other weights (fp32), keys relative to the model
    vocab/<field>.arrow      index methods only: Arrow IPC file, columns ``id`` (int64 raw id,
                             ascending) and ``index`` (int32 vocabulary index), memory-mappable

``Manifest.manifest_sha256`` covers the manifest itself (its canonical JSON without that
field), so a corrupted manifest is refused like a corrupted table file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torchrec.modules.embedding_configs import PoolingType

from recsys.embeddings.base import FeatureInfo, MethodContext
from recsys.features import FieldSpec, IdScheme

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDING_FILE = "embedding.safetensors"
DENSE_FILE = "dense.safetensors"
VOCAB_DIR = "vocab"
Dtype = Literal["fp32", "fp16", "int8", "int4"]
DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")


class ArtifactError(ValueError):
    """An artifact that cannot be served: missing, corrupted or incompatible."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str
    bytes: int


class DatasetContract(_Strict):
    """The part of ``dataset.json`` that serving needs to turn raw values into ids."""

    name: str
    fields: list[FieldSpec]
    id_scheme: IdScheme
    hash: str = Field(description="recsys.hashing.HASH_NAME of the hash that made the raw ids")
    vocabularies: dict[str, str] = Field(default_factory=dict, description="field -> vocab file in the artifact")


class FeatureEntry(_Strict):
    name: str
    cardinality: int
    num_distinct: int | None = None
    multi_valued: bool = False
    weighted: bool = False
    pooling: str = "SUM"


class ContextEntry(_Strict):
    """``MethodContext`` as JSON, so the method rebuilds with identical sizes."""

    features: list[FeatureEntry]
    embedding_dim: int
    budget_bytes: int | None = None

    @classmethod
    def of(cls, ctx: MethodContext) -> "ContextEntry":
        features = [
            FeatureEntry(name=f.name, cardinality=f.cardinality, num_distinct=f.num_distinct,
                         multi_valued=f.multi_valued, weighted=f.weighted, pooling=f.pooling.name)
            for f in ctx.features
        ]
        return cls(features=features, embedding_dim=ctx.embedding_dim, budget_bytes=ctx.budget_bytes)

    def context(self) -> MethodContext:
        features = tuple(
            FeatureInfo(f.name, f.cardinality, f.num_distinct, f.multi_valued, f.weighted, PoolingType[f.pooling])
            for f in self.features
        )
        return MethodContext(features, self.embedding_dim, self.budget_bytes)


class MethodEntry(_Strict):
    name: str = Field(description="the trained method")
    served: str = Field(description="registered method whose from_export rebuilds the served module")
    options: dict[str, Any]
    id_scheme: Literal["index", "raw"]
    memory_bytes: int


class TableEntry(_Strict):
    """One stock-EBC table inside the served module (key of its weight in embedding.safetensors)."""

    rows: int
    dim: int
    dtype: Dtype


class Manifest(_Strict):
    format_version: int = FORMAT_VERSION
    created: str
    source_run: str | None = None
    dataset: DatasetContract
    method: MethodEntry
    context: ContextEntry
    model: dict[str, Any] = Field(description="recsys.config.ModelConfig")
    num_dense: int
    dtype: Dtype
    tables: dict[str, TableEntry] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict, description="the run's scalar test/valid metrics")
    files: dict[str, FileEntry] = Field(default_factory=dict)
    manifest_sha256: str = ""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _canonical(manifest: Manifest) -> bytes:
    data = manifest.model_dump(mode="json")
    data.pop("manifest_sha256")
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(folder: Path, manifest: Manifest, names: list[str]) -> Manifest:
    """Checksum the files ``names`` (relative to ``folder``), then the manifest; write it."""
    files = {name: FileEntry(sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size) for name in names}
    manifest = manifest.model_copy(update={"files": files})
    manifest = manifest.model_copy(update={"manifest_sha256": hashlib.sha256(_canonical(manifest)).hexdigest()})
    (folder / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> Manifest:
    """Parse ``manifest.json`` and check its own checksum and format version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST}; not an export artifact (make one with `recsys export`)")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {manifest.format_version}, this code reads {FORMAT_VERSION}")
    if hashlib.sha256(_canonical(manifest)).hexdigest() != manifest.manifest_sha256:
        raise ArtifactError(f"{path}: manifest checksum mismatch; the manifest is corrupted")
    return manifest


def verify_files(folder: str | Path, manifest: Manifest) -> None:
    """Raise ``ArtifactError`` unless every listed file exists with its size and sha256."""
    root = Path(folder)
    for name, entry in sorted(manifest.files.items()):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{root}: file name {name!r} in the manifest points outside the artifact")
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{root}: file {name} listed in the manifest is missing")
        if path.stat().st_size != entry.bytes:
            raise ArtifactError(f"{root}: {name} is {path.stat().st_size} bytes, the manifest says {entry.bytes}; corrupted")
        if sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{root}: checksum mismatch for {name}; the artifact is corrupted, refusing to serve it")
