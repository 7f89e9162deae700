"""Serving artifacts: ``export_run`` writes one from a run folder, ``load_artifact`` verifies and rebuilds it."""

from recsys.export.artifact import DTYPES, ArtifactError, Manifest, read_manifest, verify_files
from recsys.export.exporter import export_run, load_run
from recsys.export.loader import LoadedArtifact, load_artifact
from recsys.export.mlflow_run import RunNotFound, log_checkpoint, resolve_run

__all__ = [
    "DTYPES",
    "ArtifactError",
    "LoadedArtifact",
    "Manifest",
    "RunNotFound",
    "export_run",
    "load_artifact",
    "load_run",
    "log_checkpoint",
    "read_manifest",
    "resolve_run",
    "verify_files",
]
