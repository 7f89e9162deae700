"""Experiment tracking: the only module on the training side that talks to MLflow's tracking API.

By default runs go to an embedded store, ``sqlite:///mlflow.db`` in the working directory (no
server needed; look at it with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``).
``MLFLOW_TRACKING_URI``, ``tracking.tracking_uri`` or ``--tracking-uri`` point it at a server
(``recsys mlflow-server``) instead.

Resilience: a call that fails for a transport reason (server down, timeout, 5xx) is retried
with back-off (``BACKOFF_S``); if it still fails the tracker goes offline: it appends every
call to a JSONL spool in the run folder and, at most every ``PROBE_EVERY_S`` seconds and at
``close``, replays the spool in order; once a replay succeeds it is online again. Calls the
server rejects (bad values) are dropped with a warning, except a call to a run the store does
not hold (``RESOURCE_DOES_NOT_EXIST``: a worker pointed at another store), which is spooled like
an outage so that the driver replays it into its own store at the end. Training never stops for
tracking, except at start-up with ``tracking.required: true`` (``TrackingUnavailable``).

A relative local store (``sqlite:///mlflow.db``, ``./mlruns``) is made absolute against the
working directory (``recsys.tracking_uri.absolute_uri``), so that Ray workers, which run in Ray's session folder,
open the driver's store and not an empty one of their own.

Step metrics are sent by a background thread (``log_metrics`` only enqueues), so the training
thread never waits for the store or the network; every other call first waits for the queue.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol

from recsys.config import TrackingConfig
from recsys.tracking_uri import absolute_uri, tracking_uri_of
from recsys.training.tracking_spool import MAIN_NAME, PENDING, Record, Spool, spool_files

BACKOFF_S = (0.5, 1.0, 2.0)  # waits between the attempts of one call
PROBE_EVERY_S = 30.0  # while offline: how often a call tries to replay the spool
RUN_OPS = ("params", "metrics", "artifact", "terminate")  # calls into an existing run


class TrackingUnavailable(ConnectionError):
    """The tracking server cannot be reached and tracking is required."""


class _Transient(Exception):
    """A failure worth retrying later (the server, not the call, is the problem)."""


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def close(self, status: str = "FINISHED", others: list[Path] | None = None) -> None: ...


class NullTracker:
    """Tracking switched off (and every rank but 0 of a distributed run)."""

    run_id: str | None = None
    uri: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        return None

    def close(self, status: str = "FINISHED", others: list[Path] | None = None) -> None:
        return None


def tracking_uri(cfg: TrackingConfig) -> str:
    """The store a run logs to (``recsys.tracking_uri.tracking_uri_of``), made absolute."""
    return absolute_uri(tracking_uri_of(cfg.tracking_uri))


def _is_transient(exc: BaseException, record: Record | None = None) -> bool:
    """Worth retrying and spooling: the transport failed, or (``record`` given) the call names a
    run this store does not hold (a worker on another store than its driver's)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (OSError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        if record is not None and record.get("op") in RUN_OPS and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return True
        return "API request to" in text or exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return type(exc).__module__.startswith(("requests", "urllib3"))


class MlflowTracker:
    """One MLflow run that survives an unreachable server (see the module docstring).

    ``run_id`` attaches to an existing run (a Ray worker logging into the driver's run);
    ``spool`` is the JSONL file used while offline (none: failures are only warned about).
    """

    def __init__(self, cfg: TrackingConfig, tags: dict[str, str] | None = None, spool: Path | None = None, run_id: str | None = None) -> None:
        import mlflow

        self.uri = tracking_uri(cfg)
        if self.uri.startswith("http"):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this class retries itself
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        self._spool = Spool(spool) if spool is not None else None
        self._pending: dict[str, str] = {}
        self._offline = self._spool is not None and self._spool.count() > 0  # calls left by a crashed process
        self._last_probe = 0.0
        self._queue: queue.Queue[Record | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self.run_id = run_id
        self._owns_run = run_id is None  # an attached tracker leaves ending the run to its owner
        if run_id is None:
            record = {
                "op": "create_run",
                "pending": f"{PENDING}{uuid.uuid4().hex}",
                "experiment": cfg.experiment,
                "run_name": cfg.run_name,
                "tags": tags or {},
            }
            try:
                self.run_id = self._attempt(record, BACKOFF_S)
            except _Transient as exc:
                if cfg.required:
                    raise TrackingUnavailable(f"MLflow tracking server at {self.uri} is unreachable and tracking.required is true: {exc}") from None
                self.run_id = record["pending"]
                self._go_offline(record, exc)

    @property
    def offline(self) -> bool:
        return self._offline

    def _run(self, run: str) -> str:
        if run.startswith(PENDING):
            if run not in self._pending:
                raise _Transient(f"run {run} has not been created on the server yet")
            return self._pending[run]
        return run

    def _execute(self, record: Record) -> str | None:
        from mlflow.entities import Metric, Param

        op = record["op"]
        if op == "create_run":
            experiment = self._client.get_experiment_by_name(record["experiment"])
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(record["experiment"])
            run_id = self._client.create_run(experiment_id, run_name=record["run_name"], tags=record["tags"]).info.run_id
            self._pending[record["pending"]] = run_id
            return run_id
        run = self._run(record["run"])
        if op == "params":
            items = [Param(k, v) for k, v in record["params"].items()]
            for i in range(0, len(items), 100):
                self._client.log_batch(run, params=items[i : i + 100])
        elif op == "metrics":
            items = [Metric(k, float(v), record["ts"], record["step"]) for k, v in record["metrics"].items()]
            self._client.log_batch(run, metrics=items)
        elif op == "artifact":
            self._client.log_artifact(run, record["path"], record["folder"])
        elif op == "terminate":
            self._client.set_terminated(run, status=record["status"])
        elif op == "register":
            from recsys.training.registry import register_model

            register_model(self.uri, run, Path(record["run_dir"]), record["name"], record["alias"])
        return None

    def _attempt(self, record: Record, backoff: tuple[float, ...]) -> Any:
        """Run one call, retrying transport failures after each wait in ``backoff``."""
        for wait in (*backoff, None):
            try:
                return self._execute(record)
            except Exception as exc:  # noqa: BLE001 - sorted into transient or rejected below
                if not _is_transient(exc, record):
                    raise
                if wait is None:
                    raise _Transient(str(exc).splitlines()[0][:300]) from None
                time.sleep(wait)
        return None

    def _go_offline(self, record: Record, exc: BaseException) -> None:
        record["uri"] = self.uri
        self._offline = True
        self._last_probe = time.monotonic()
        where = f"spooling calls to {self._spool.path}" if self._spool is not None else "dropping calls (no spool)"
        warnings.warn(
            f"MLflow at {self.uri} unreachable or without the run ({exc}); training goes on, {where} until it is back", RuntimeWarning, stacklevel=3
        )
        if self._spool is not None:
            self._spool.append(record)

    def _submit(self, record: Record) -> None:
        record["uri"] = self.uri
        if self._offline:
            if self._spool is not None:
                self._spool.append(record)
            if time.monotonic() - self._last_probe >= PROBE_EVERY_S:
                self.flush(backoff=())
            return
        try:
            self._attempt(record, BACKOFF_S)
        except _Transient as exc:
            self._go_offline(record, exc)
        except Exception as exc:  # noqa: BLE001 - a rejected call must not stop training
            warnings.warn(f"MLflow rejected '{record['op']}': {exc}", RuntimeWarning, stacklevel=3)

    def flush(self, backoff: tuple[float, ...] = BACKOFF_S, extra: list[Path] | None = None) -> bool:
        """Replay the spool (then the ``extra`` spool files) in order; True when all went through."""
        self._last_probe = time.monotonic()
        spools = ([self._spool] if self._spool is not None else []) + [Spool(p) for p in extra or []]
        for spool in spools:
            records = spool.read()
            for i, record in enumerate(records):
                try:
                    self._attempt(record, backoff)
                except _Transient:
                    spool.rewrite([{**r, "run": self._pending.get(r.get("run", ""), r.get("run"))} for r in records[i:]])
                    return False
                except Exception as exc:  # noqa: BLE001
                    warnings.warn(f"dropping spooled '{record['op']}' that MLflow rejected: {exc}", RuntimeWarning, stacklevel=2)
            spool.rewrite([])
            if records:
                print(f"MLflow: replayed {len(records)} spooled call(s) from {spool.path}")
        self.run_id = self._pending.get(self.run_id or "", self.run_id)
        self._offline = False
        return True

    def _send_queued(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                self._submit(record)
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Block until every queued metric went to MLflow (or to the spool)."""
        self._queue.join()

    def log_params(self, params: dict[str, Any]) -> None:
        self.wait()
        self._submit({"op": "params", "run": self.run_id, "params": {k: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Queue metrics for the background sender (returns at once)."""
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_queued, name="mlflow-metrics", daemon=True)
            self._sender.start()
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        self._queue.put({"op": "metrics", "run": self.run_id, "metrics": values, "step": step or 0, "ts": int(time.time() * 1000)})

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.wait()
        self._submit({"op": "artifact", "run": self.run_id, "path": str(Path(path).resolve()), "folder": folder})

    def register(self, run_dir: Path, name: str, alias: str) -> None:
        """Export the finished run folder, log it as a pyfunc model, register it as ``models:/name@alias``."""
        self.wait()
        self._submit({"op": "register", "run": self.run_id, "run_dir": str(Path(run_dir).resolve()), "name": name, "alias": alias})

    def close(self, status: str = "FINISHED", others: list[Path] | None = None) -> None:
        """End the run (if this tracker created it); replays what is spooled (also ``others``:
        the workers' spools) first."""
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join()
            self._sender = None
        if self._offline or others:
            self.flush(extra=others)
        if self._owns_run:
            self._submit({"op": "terminate", "run": self.run_id, "status": status})
        if self._offline and self._spool is not None:
            files = ", ".join(str(p) for p in [self._spool.path, *(others or [])] if p.exists())
            warnings.warn(
                f"MLflow at {self.uri} is still unreachable: tracking calls are kept in {files}; "
                f"replay them with `recsys mlflow-replay {self._spool.path.parent}`",
                RuntimeWarning,
                stacklevel=2,
            )


def make_tracker(
    cfg: TrackingConfig, tags: dict[str, str] | None = None, run_dir: Path | None = None, run_id: str | None = None, rank: int = 0
) -> Tracker:
    """The tracker of one process: MLflow on the driver or rank 0 (spooling into ``run_dir``), else none."""
    if not cfg.enabled or rank != 0:
        return NullTracker()
    spool = None if run_dir is None else Path(run_dir) / (MAIN_NAME if run_id is None else "mlflow_spool.rank0.jsonl")
    return MlflowTracker(cfg, tags, spool, run_id)


def replay_folder(folder: Path, uri: str | None = None) -> bool:
    """Replay the spools a run left in ``folder`` (``recsys mlflow-replay``); True when all went through."""
    files = spool_files(Path(folder))
    if not files:
        return True
    recorded = [r["uri"] for f in files for r in Spool(f).read() if r.get("uri")]
    cfg = TrackingConfig(tracking_uri=uri or (recorded[0] if recorded else None))
    tracker = MlflowTracker(cfg, spool=files[0], run_id="replay")
    return tracker.flush(extra=files[1:])


def start_system_metrics(tracker: Tracker, interval_s: float = 10.0) -> Callable[[], None]:
    """Log the node's CPU, memory, disk and network as ``system/*`` metrics; returns a stop function."""
    run_id = getattr(tracker, "run_id", None)
    if not isinstance(tracker, MlflowTracker) or run_id is None or run_id.startswith(PENDING) or tracker.offline:
        return lambda: None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracker.uri)
    monitor.start()
    return monitor.finish
