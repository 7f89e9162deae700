"""``recsys export --run RUN_ID``: the checkpoint of an MLflow run, found through the MLflow client.

A run is exportable by id when its artifacts hold the run folder's checkpoint: ``config.yaml``
and, for every phase, ``phases/<phase>/weights.safetensors`` (plus ``state.safetensors`` when
the phase has state); ``metrics.json`` is copied when present. ``log_checkpoint`` logs exactly
that from a finished run folder. ``resolve_run`` downloads those files into a temporary folder
shaped like a run folder, which ``export_run`` then reads as usual.

``--run`` names a folder when one exists at that path; otherwise it is taken as a run id
(``runs:/<id>`` is accepted too) in the tracking store given by ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else the project default ``sqlite:///mlflow.db``. An unknown id, an
unreachable store or a run without a checkpoint is a ``RunNotFound`` naming the id and the store.

Example:
    >>> log_checkpoint("runs/dlrm-hash", run_id)                      # doctest: +SKIP
    >>> with resolve_run(run_id) as (run_dir, source):                # doctest: +SKIP
    ...     export_run(run_dir, Path("artifacts/x"), source=source)
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.runfolder import CONFIG, METRICS, PHASES, WEIGHTS, RunFolder
from recsys.storage import download_tree, is_uri, location
from recsys.tracking_uri import tracking_uri_of

_RUN_ID = re.compile(r"^(?:runs:/)?(?P<id>[0-9A-Za-z_-]{8,64})/?$")


class RunNotFound(LookupError):
    """``--run`` is neither a run folder nor an exportable MLflow run."""


def _client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def log_checkpoint(run_dir: str | Path, run_id: str, tracking_uri: str | None = None) -> list[str]:
    """Log the checkpoint of the run folder ``run_dir`` into MLflow run ``run_id``; returns the artifact paths."""
    run_dir, uri = Path(run_dir), tracking_uri_of(tracking_uri)
    client = _client(uri)
    logged = RunFolder(run_dir).checkpoint_files()
    for name in logged:
        folder = str(Path(name).parent)
        client.log_artifact(run_id, str(run_dir / name), None if folder == "." else folder)
    if CONFIG not in logged or not any(p.endswith(WEIGHTS) for p in logged):
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (needs {CONFIG} and {PHASES}/<phase>/{WEIGHTS})")
    return logged


def _remote_run(uri: str) -> Iterator[tuple[Path, str | None]]:
    """A run folder on object storage, downloaded (config, metrics, phases) into a temporary folder."""
    folder = location(uri)
    if not (folder / CONFIG).is_file():
        raise RunNotFound(f"--run {uri}: no {CONFIG} there; is this a finished run folder (`recsys train --out`)?")
    tmp = Path(tempfile.mkdtemp(prefix="recsys-run-"))
    try:
        yield download_tree(folder, tmp, only=(CONFIG, METRICS, PHASES)), uri
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_id(run: str) -> str | None:
    match = _RUN_ID.match(run)
    return match["id"] if match else None


@contextmanager
def resolve_run(run: str | Path, tracking_uri: str | None = None) -> Iterator[tuple[Path, str | None]]:
    """``(run folder, source)`` for ``run``: the folder itself (source ``None``), or an MLflow run's
    checkpoint downloaded into a temporary folder (source ``mlflow-run:<id>@<tracking uri>``)."""
    if is_uri(run):
        yield from _remote_run(str(run))
        return
    path = Path(run)
    if path.is_dir():
        yield path, None
        return
    run_id = _run_id(str(run))
    if run_id is None:
        raise RunNotFound(f"--run {str(run)!r}: no such run folder, and not an MLflow run id")
    uri = tracking_uri_of(tracking_uri)
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        info = client.get_run(run_id).info
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise RunNotFound(f"--run {run_id}: no such run folder, and no MLflow run with this id at {uri}") from None
        raise RunNotFound(f"--run {run_id}: could not look the run up at {uri}: {exc}") from None
    top = {a.path for a in client.list_artifacts(run_id)}
    phases = [a.path for a in client.list_artifacts(run_id, PHASES) if a.is_dir] if PHASES in top else []
    weighted = [p for p in phases if any(a.path.endswith(f"/{WEIGHTS}") for a in client.list_artifacts(run_id, p))]
    if CONFIG not in top or not weighted:
        raise RunNotFound(
            f"MLflow run {run_id} ({info.run_name or 'unnamed'}, {info.status}) at {uri} has no checkpoint among its artifacts "
            f"(needs config.yaml and phases/<phase>/weights.safetensors; found {sorted(top) or 'none'}). "
            "Log it with recsys.export.log_checkpoint(run_dir, run_id), or pass the run folder to --run."
        )
    tmp = Path(tempfile.mkdtemp(prefix=f"recsys-run-{run_id[:12]}-"))
    try:
        import mlflow

        for name in (CONFIG, METRICS):
            if name in top:
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(tmp), tracking_uri=uri)
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PHASES, dst_path=str(tmp), tracking_uri=uri)  # -> tmp/phases
        yield tmp, f"mlflow-run:{run_id}@{uri}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
