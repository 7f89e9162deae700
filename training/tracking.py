"""Experiment tracking: the only module on the training side that imports mlflow.

By default runs go to an embedded store, ``sqlite:///mlflow.db`` in the working directory (no
server needed; look at it with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``).
``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri`` point it at a server instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from recsys.config import TrackingConfig

DEFAULT_URI = "sqlite:///mlflow.db"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracking switched off."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        return None

    def close(self, status: str = "FINISHED") -> None:
        return None


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class MlflowTracker:
    """One MLflow run; params are stringified and truncated to MLflow's limits."""

    def __init__(self, cfg: TrackingConfig, tags: dict[str, str] | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri(cfg))
        experiment = self._client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(cfg.experiment)
        run = self._client.create_run(experiment_id, run_name=cfg.run_name, tags=tags or {})
        self.run_id: str | None = run.info.run_id
        self.uri = tracking_uri(cfg)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        self._client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), folder)

    def close(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)


def make_tracker(cfg: TrackingConfig, tags: dict[str, str] | None = None) -> Tracker:
    return MlflowTracker(cfg, tags) if cfg.enabled else NullTracker()
