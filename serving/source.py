"""Where a served artifact comes from: a local folder, or the MLflow model registry.

A source is polled with ``current()`` (cheap: the folder's resolved path and manifest hash, or
the version an alias points at) and fetched with ``fetch()`` when that changed. A registered
model is a pyfunc logged by ``serving.pyfunc.log_model``: the artifact folder is found inside
the downloaded model by its ``manifest.json``.

Example:
    >>> src = make_source("models:/ctr@champion")   # doctest: +SKIP
    >>> ref = src.current(); folder = src.fetch(ref)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from recsys.export.artifact import MANIFEST, ArtifactError, manifest_bytes

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class SourceRef:
    """One version of a source: ``key`` changes whenever the artifact does."""

    key: str
    label: str  # a short, human-readable version
    handle: str  # what ``fetch`` needs (a resolved path, a registry version)
    where: str = ""  # where this version lives, for logs and errors (a copy may carry another's manifest)

    def describe(self) -> str:
        """Where the version lives, with its label: ``"/srv/artifacts/v7 (manifest 3f2c9a1b0c4d)"``; a
        refused copy of a served folder carries the served manifest's id, so its place names it first."""
        return f"{self.where} (manifest {self.label})" if self.where else self.label


class LocalSource:
    """A folder (or a symlink to one, repointed to publish a new artifact)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def current(self) -> SourceRef:
        real = os.path.realpath(self.path)
        digest = hashlib.sha256(manifest_bytes(real)).hexdigest()[:12]  # a regular file inside the folder, read without blocking
        return SourceRef(key=f"{real}#{digest}", label=digest, handle=real, where=real)

    def fetch(self, ref: SourceRef) -> Path:
        return Path(ref.handle)

    def release(self, ref: SourceRef) -> None:
        """Nothing to clean up for a local folder."""


class RegistrySource:
    """``models:/NAME@ALIAS`` (polled) or ``models:/NAME/VERSION`` (fixed) in an MLflow registry."""

    def __init__(self, uri: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> None:
        match = _MODELS_URI.match(uri)
        if match is None:
            raise ValueError(f"model source {uri!r}: expected a folder, models:/NAME@ALIAS or models:/NAME/VERSION")
        self.name, self.alias, self.version = match["name"], match["alias"], match["version"]
        self.cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="recsys-serve-"))
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def current(self) -> SourceRef:
        if self.alias is not None:
            version = str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        else:
            version = str(self.client.get_model_version(self.name, str(self.version)).version)
        return SourceRef(key=f"{self.name}/{version}", label=f"{self.name}/{version}", handle=version)

    def fetch(self, ref: SourceRef) -> Path:
        import mlflow

        dst = self.cache / f"{self.name}-v{ref.handle}"
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        uri = f"models:/{self.name}/{ref.handle}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=self.client.tracking_uri))
        found = sorted(p.parent for p in local.rglob(MANIFEST))
        if len(found) != 1:
            raise ArtifactError(f"{uri}: expected one recsys artifact (a {MANIFEST}) in the model, found {len(found)}")
        return found[0]

    def release(self, ref: SourceRef) -> None:
        """Delete the download of a version no longer served (open memory maps stay valid)."""
        shutil.rmtree(self.cache / f"{self.name}-v{ref.handle}", ignore_errors=True)


Source = LocalSource | RegistrySource


def make_source(source: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> Source:
    if source.startswith("models:/"):
        return RegistrySource(source, cache_dir, tracking_uri)
    return LocalSource(source)


def resolve_source(source: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> tuple[str, Path]:
    """``(version label, local folder)`` of a source, fetched once."""
    src = make_source(source, cache_dir, tracking_uri)
    ref = src.current()
    return ref.label, src.fetch(ref)
