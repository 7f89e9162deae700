"""Where a served artifact comes from: a local folder, a folder on object storage, or the MLflow model registry.

A source is polled with ``current()`` (cheap: the folder's resolved path and manifest hash, the
hash of a remote ``manifest.json``, or the version an alias points at) and fetched with
``fetch()`` when that changed. A remote artifact (``s3://...``, see ``recsys.storage``) is
downloaded into a cache folder, manifest first; the loader then verifies every checksum, so
files caught mid-publish are refused and the old version keeps serving. A registered
model is a pyfunc logged by ``recsys.serving.pyfunc.log_model``: the artifact folder is found inside
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

from recsys.export.artifact import MANIFEST, ArtifactError, manifest_bytes, read_manifest
from recsys.storage import StoragePath, is_uri

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


class RemoteSource:
    """An artifact folder on object storage, republished in place to roll out a new version."""

    def __init__(self, uri: str, cache_dir: str | Path | None = None) -> None:
        self.folder = StoragePath(uri)
        self.cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="recsys-serve-"))

    def current(self) -> SourceRef:
        manifest = self.folder / MANIFEST
        try:
            data = manifest.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{self.folder}: no {MANIFEST}; not an export artifact (make one with `recsys export`)") from None
        digest = hashlib.sha256(data).hexdigest()[:12]
        return SourceRef(key=f"{self.folder}#{digest}", label=digest, handle=digest, where=str(self.folder))

    def fetch(self, ref: SourceRef) -> Path:
        dst = self.cache / f"{self.folder.name}-{ref.handle}"
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        data = (self.folder / MANIFEST).read_bytes()
        if hashlib.sha256(data).hexdigest()[:12] != ref.handle:
            raise ArtifactError(f"{self.folder}: {MANIFEST} changed while fetching version {ref.label}")
        (dst / MANIFEST).write_bytes(data)
        for name in read_manifest(dst).files:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ArtifactError(f"{self.folder}: file name {name!r} in the manifest points outside the artifact")
            target = dst / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((self.folder / name).read_bytes())
        return dst

    def release(self, ref: SourceRef) -> None:
        """Delete the download of a version no longer served (open memory maps stay valid)."""
        shutil.rmtree(self.cache / f"{self.folder.name}-{ref.handle}", ignore_errors=True)


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


Source = LocalSource | RemoteSource | RegistrySource


def make_source(source: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> Source:
    if source.startswith("models:/"):
        return RegistrySource(source, cache_dir, tracking_uri)
    if is_uri(source):
        return RemoteSource(source, cache_dir)
    return LocalSource(source)


def resolve_source(source: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> tuple[str, Path]:
    """``(version label, local folder)`` of a source, fetched once."""
    src = make_source(source, cache_dir, tracking_uri)
    ref = src.current()
    return ref.label, src.fetch(ref)
