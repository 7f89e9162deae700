"""Load a serving artifact: verify every checksum first, then rebuild the served model.

Every file is read inside the artifact folder, as a regular file, and only when the manifest
lists it with a checksum (``recsys.export.artifact.verify_files``, ``recsys.export.files``).

The served embedding module is rebuilt by the registered method's ``from_export`` with its
stock-EBC tables left uninitialised (no transient fp32 copy); for a quantized artifact those
EBCs are then replaced by torchrec's quantized EBC (fbgemm IntNBit tables) and filled with the
stored rows, one table at a time.

Example:
    >>> loaded = load_artifact("artifacts/dlrm-hash-int8")   # doctest: +SKIP
    >>> loaded.model(dense, kjt)                              # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from recsys.config import ModelConfig
from recsys.embeddings import MethodContext, get_method
from recsys.embeddings.base import ExportedMethod
from recsys.export.artifact import DENSE_FILE, EMBEDDING_FILE, MANIFEST, ArtifactError, Manifest, read_manifest, required_files, verify_files
from recsys.export.files import artifact_path, open_regular
from recsys.export.tables import empty_quantized_tables, quantized_targets, tables_uninitialised
from recsys.hashing import HASH_NAME
from recsys.models import build_model
from recsys.models.blocks import CTRModel


@dataclass
class LoadedArtifact:
    """A verified artifact, rebuilt: ``model.embedding`` is the served method module."""

    folder: Path
    manifest: Manifest
    ctx: MethodContext
    model: CTRModel

    @property
    def embedding(self) -> nn.Module:
        return self.model.embedding


def _check_compatible(folder: Path, manifest: Manifest) -> None:
    if manifest.dataset.hash != HASH_NAME:
        raise ArtifactError(f"{folder / MANIFEST}: ids were hashed with '{manifest.dataset.hash}', this code hashes with '{HASH_NAME}'")
    try:
        get_method(manifest.method.served)
    except KeyError as exc:
        raise ArtifactError(f"{folder / MANIFEST}: {exc.args[0]}") from None
    if manifest.dtype != "fp32" and not manifest.tables:
        raise ArtifactError(f"{folder / MANIFEST}: dtype {manifest.dtype} but no quantized tables listed")


def _read_tables(path: Path, targets: dict[str, torch.Tensor]) -> None:
    """Read each table's stored rows straight into its TBE storage (no transient copy).

    safetensors layout: 8-byte little-endian header size, JSON header
    ``{key: {dtype, shape, data_offsets}}``, then the data.
    """
    with open_regular(path) as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        for key, target in targets.items():
            entry = header.get(key, {})
            if entry.get("dtype") != "U8" or tuple(entry.get("shape", ())) != tuple(target.shape):
                raise ArtifactError(f"{path}: table {key} is {entry.get('dtype')} {entry.get('shape')}, expected U8 {list(target.shape)}")
            begin, end = entry["data_offsets"]
            f.seek(8 + size + begin)
            if target.is_contiguous():
                if f.readinto(memoryview(target.numpy()).cast("B")) != end - begin:
                    raise ArtifactError(f"{path}: table {key} is truncated")
            else:
                target.copy_(torch.frombuffer(bytearray(f.read(end - begin)), dtype=torch.uint8).view(target.shape))


def _rebuild(folder: Path, manifest: Manifest, ctx: MethodContext) -> CTRModel:
    quantized = manifest.dtype != "fp32"
    embedding_file, dense_file = artifact_path(folder, EMBEDDING_FILE), artifact_path(folder, DENSE_FILE)
    with safe_open(str(embedding_file), framework="pt") as f:
        keys = list(f.keys())
        state = {
            k: torch.empty(manifest.tables[k].rows, manifest.tables[k].dim) if quantized and k in manifest.tables else f.get_tensor(k) for k in keys
        }
        with tables_uninitialised():
            served = get_method(manifest.method.served).from_export(ctx, ExportedMethod(manifest.method.served, manifest.method.options, state))
        del state
        if quantized:
            served = empty_quantized_tables(served, manifest.dtype)
            targets = quantized_targets(served)
            if set(targets) != set(manifest.tables):
                raise ArtifactError(
                    f"{folder / EMBEDDING_FILE}: quantized tables {sorted(targets)} do not match the manifest's {sorted(manifest.tables)}"
                )
            _read_tables(embedding_file, targets)
    model = build_model(ModelConfig.model_validate(manifest.model), served, manifest.num_dense)
    result = model.load_state_dict(load_file(str(dense_file)), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("embedding.")]
    if missing or result.unexpected_keys:
        raise ArtifactError(
            f"{folder / DENSE_FILE}: dense weights do not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


def load_artifact(folder: str | Path, verify: bool = True) -> LoadedArtifact:
    """Verify (checksums: unless ``verify=False``) and rebuild the artifact in ``folder``;
    ``ArtifactError`` naming the file if unusable."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        verify_files(folder, manifest)
    else:
        for name in required_files(manifest):
            artifact_path(folder, name)
    _check_compatible(folder, manifest)
    ctx = manifest.context.context()
    try:
        model = _rebuild(folder, manifest, ctx)
    except ArtifactError:
        raise
    except Exception as exc:  # any failure to rebuild means an incompatible artifact
        raise ArtifactError(f"{folder}: cannot rebuild the served model from {EMBEDDING_FILE} and {DENSE_FILE}: {type(exc).__name__}: {exc}") from exc
    return LoadedArtifact(folder, manifest, ctx, model)
