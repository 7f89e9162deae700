"""Set-up and tear-down of one run, for both paths: its folder, its MLflow run, what is logged at the end.

``open_run_folder`` creates the run folder and removes an earlier run's outputs (unless resuming).
``tracking_session`` opens the run's tracker (MLflow on the driver, spooling into the run folder
while the server is unreachable; ``recsys.training.tracking``), logs the config as params, samples
system metrics, and on the way out ends the run as ``FINISHED`` or, after an exception,
``FAILED``, replaying what is spooled (the workers' spools too) first. ``TrackingSession.finish``
writes ``metrics.json`` and ``config.yaml``, logs the final metrics, the run folder's artifacts
(``recsys.runfolder.RunFolder.artifacts``) and registers the model when ``tracking.register_as``
is set. A run folder on a URI is copied into a local folder first (MLflow logs local files).

Example:
    >>> with tracking_session(cfg, out) as session:          # doctest: +SKIP
    ...     session.finish(run_phases(Experiment(cfg, out, session.tracker), resume=False))
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recsys.config import ExperimentConfig, flatten
from recsys.runfolder import CONFIG, OUTPUTS, RunFolder
from recsys.storage import Location, StoragePath, download_tree
from recsys.training.collectives import barrier, is_main
from recsys.training.tracking import Tracker, make_tracker, start_system_metrics
from recsys.training.tracking_spool import MAIN_NAME, spool_files


def open_run_folder(out: Location, resume: bool, extra: tuple[str, ...] = ()) -> RunFolder:
    """The run folder ``out``, created, with an earlier run's outputs (and ``extra``) removed unless
    ``resume`` (by rank 0; every rank waits for it). Check the dataset before: a missing one must
    fail before a folder or an MLflow run exists."""
    folder = RunFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and is_main():
        folder.clear(extra)
    barrier()  # no rank looks at the folder before it is cleared
    return folder


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    return {"method": cfg.embedding.method, "model": cfg.model.name, "workers": str(cfg.training.workers)}


def local_dir(out: Location) -> Path:
    """The local folder of the driver's own files (MLflow spool, copies of the artifacts it
    logs): the run folder itself, or a new temporary folder for a run folder on a URI."""
    return out if isinstance(out, Path) else Path(tempfile.mkdtemp(prefix="recsys-run-"))


def release_local_dir(out: Location, local: Path) -> None:
    """Remove ``local_dir``'s temporary folder, unless it keeps MLflow calls to replay."""
    if local != out and not any(local.glob("mlflow_spool*.jsonl")):
        shutil.rmtree(local, ignore_errors=True)


class TrackingSession:
    """The tracker of a run in progress and the run folder it reports."""

    def __init__(self, cfg: ExperimentConfig, out: Location, tracker: Tracker, local: Path) -> None:
        self.cfg, self.folder, self.tracker, self.local = cfg, RunFolder(out), tracker, local

    def finish(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json``/``config.yaml``, log final metrics, artifacts and method diagnostics,
        and register the model when ``tracking.register_as`` is set."""
        cfg, tracker = self.cfg, self.tracker
        self.folder.write_metrics(metrics)
        self.folder.write_config(cfg)
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        if isinstance(self.folder.root, StoragePath):
            if not cfg.tracking.enabled:
                return
            local = RunFolder(download_tree(self.folder.root, self.local, only=(*OUTPUTS, CONFIG)))
        else:
            local = self.folder
        for path, folder in local.artifacts(cfg.tracking.log_checkpoint):
            tracker.log_artifact(path, folder)
        register = getattr(tracker, "register", None)
        if cfg.tracking.register_as and register is not None:
            register(Path(local.root), cfg.tracking.register_as, cfg.tracking.alias)


@contextmanager
def tracking_session(cfg: ExperimentConfig, out: Location) -> Iterator[TrackingSession]:
    """The tracked run of ``cfg`` reporting the run folder ``out`` (see the module docstring)."""
    local = local_dir(out)
    tracker = make_tracker(cfg.tracking, tags=run_tags(cfg), run_dir=local)
    stop_system_metrics = start_system_metrics(tracker) if cfg.tracking.system_metrics else (lambda: None)
    status = "FAILED"
    try:
        tracker.log_params(flatten(cfg))
        yield TrackingSession(cfg, out, tracker, local)
        status = "FINISHED"
    finally:
        stop_system_metrics()
        tracker.close(status, [p for p in spool_files(local) if p.name != MAIN_NAME])  # the workers' spools
        release_local_dir(out, local)
