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
field), so a corrupted manifest is refused like a corrupted table file. Every file the loader
reads (``required_files``) must be listed in ``files`` with its checksum, and is read only
inside the folder, as a regular file (``recsys.export.files``). With ``RECSYS_ARTIFACT_KEY``
set, manifests are signed and checked (``recsys.export.signing``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torchrec.modules.embedding_configs import PoolingType

from recsys.embeddings.base import FeatureInfo, MethodContext
from recsys.export.files import ArtifactError, artifact_path, open_regular, read_regular, sha256_of
from recsys.export.signing import sign, signature_problem, signing_key
from recsys.features import FieldSpec, IdScheme

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDING_FILE = "embedding.safetensors"
DENSE_FILE = "dense.safetensors"
VOCAB_DIR = "vocab"
Dtype = Literal["fp32", "fp16", "int8", "int4"]
DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
MAX_MANIFEST_BYTES = 64 << 20


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
            FeatureEntry(
                name=f.name,
                cardinality=f.cardinality,
                num_distinct=f.num_distinct,
                multi_valued=f.multi_valued,
                weighted=f.weighted,
                pooling=f.pooling.name,
            )
            for f in ctx.features
        ]
        return cls(features=features, embedding_dim=ctx.embedding_dim, budget_bytes=ctx.budget_bytes)

    def context(self) -> MethodContext:
        features = tuple(
            FeatureInfo(f.name, f.cardinality, f.num_distinct, f.multi_valued, f.weighted, PoolingType[f.pooling]) for f in self.features
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
    signature: str | None = Field(None, description="HMAC of the canonical manifest (recsys.export.signing)")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def _canonical(manifest: Manifest) -> bytes:
    data = manifest.model_dump(mode="json")
    data.pop("manifest_sha256")
    data.pop("signature")
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def required_files(manifest: Manifest) -> list[str]:
    """Every file the loader reads besides the manifest: tables, dense weights, vocabularies."""
    return [EMBEDDING_FILE, DENSE_FILE, *manifest.dataset.vocabularies.values()]


def write_manifest(folder: Path, manifest: Manifest, names: list[str]) -> Manifest:
    """Checksum the files ``names`` (relative to ``folder``), then the manifest (signed when
    ``RECSYS_ARTIFACT_KEY`` is set); write it."""
    files = {name: FileEntry(sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size) for name in names}
    manifest = manifest.model_copy(update={"files": files, "signature": None})
    canonical = _canonical(manifest)
    key = signing_key()
    manifest = manifest.model_copy(
        update={"manifest_sha256": hashlib.sha256(canonical).hexdigest(), "signature": sign(canonical, key) if key else None}
    )
    data = manifest.model_dump(mode="json")
    if data["signature"] is None:
        del data["signature"]  # unsigned manifests stay readable by loaders that predate signing
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return manifest


def manifest_bytes(folder: str | Path) -> bytes:
    """The bytes of ``folder``'s manifest, read as ``recsys.export.files`` reads every artifact file."""
    if not os.path.lexists(Path(folder) / MANIFEST):
        raise ArtifactError(f"{folder}: no {MANIFEST}; not an export artifact (make one with `recsys export`)")
    return read_regular(artifact_path(folder, MANIFEST), MAX_MANIFEST_BYTES)


def read_manifest(folder: str | Path) -> Manifest:
    """Parse ``manifest.json`` and check its own checksum, signature and format version."""
    path = Path(folder) / MANIFEST
    try:
        manifest = Manifest.model_validate_json(manifest_bytes(folder))
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {manifest.format_version}, this code reads {FORMAT_VERSION}")
    canonical = _canonical(manifest)
    if hashlib.sha256(canonical).hexdigest() != manifest.manifest_sha256:
        raise ArtifactError(f"{path}: manifest checksum mismatch; the manifest is corrupted")
    problem = signature_problem(canonical, manifest.signature, signing_key())
    if problem:
        raise ArtifactError(f"{path}: {problem}")
    return manifest


def verify_files(folder: str | Path, manifest: Manifest) -> dict[str, Path]:
    """Check every listed file's size and sha256, and that every file the loader reads is listed;
    returns ``name -> real path``. ``ArtifactError`` naming the file otherwise."""
    unlisted = [n for n in required_files(manifest) if n not in manifest.files]
    if unlisted:
        raise ArtifactError(
            f"{Path(folder) / unlisted[0]}: read by the loader but not listed in the manifest's files "
            f"(no checksum); refusing the artifact (unlisted: {', '.join(unlisted[:5])})"
        )
    paths = {}
    for name, entry in sorted(manifest.files.items()):
        path = paths[name] = artifact_path(folder, name)
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size != entry.bytes:
                raise ArtifactError(f"{Path(folder) / name}: {size} bytes, the manifest says {entry.bytes}; corrupted")
            if sha256_of(f) != entry.sha256:
                raise ArtifactError(f"{Path(folder) / name}: checksum mismatch for {name}; the artifact is corrupted, refusing to serve it")
    return paths
