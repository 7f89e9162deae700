"""Shared fixtures of the distributed-training and tracking tests: small planted data, a real
local Ray cluster (2 CPUs), a real MLflow server on 127.0.0.1, and one 2-worker run logged to it."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from recsys.config import ExperimentConfig, load_config
from recsys.training.mlflow_server import LocalServer as Server

ROOT = Path(__file__).resolve().parents[2]
# Every test cluster is local and runs without Ray's token auth: Ray caches the mode in the
# process, so one test disabling it (the two-node test) and a later one not would disagree with
# a token left in ~/.ray by another Ray on the machine.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
DATA_ROWS = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def experiment(data: Path, *extra: str) -> ExperimentConfig:
    """The tests' experiment: DLRM, 2 epochs, 256 rows per worker step, log every 5 steps."""
    return load_config(
        ROOT / "configs/quickstart.yaml",
        [
            f"data.path={data}",
            "training.epochs=2",
            "training.batch_size=256",
            "training.eval_batch_size=1024",
            "training.progress=false",
            "training.log_every=5",
            "training.checkpoint_every=10",
            "training.patience=5",
            "tracking.system_metrics=false",
            *extra,
        ],
    )


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    from recsys.data.synthetic import generate

    out = tmp_path_factory.mktemp("ray-data") / "small"
    generate(out, rows=DATA_ROWS, profile="small", seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    from recsys.training.ray_trainer import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("mlflow")
    server = Server(free_port(), folder / "mlflow.db").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_run(small_data, ray_cluster, mlflow_server, tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted 2-worker run, logged to the server and registered as ``ctr@champion``."""
    from recsys.training.run import train_experiment

    out = tmp_path_factory.mktemp("ray-run") / "run"
    cfg = experiment(
        small_data,
        "training.workers=2",
        f"tracking.tracking_uri={mlflow_server.uri}",
        "tracking.experiment=ray-test",
        "tracking.register_as=ctr",
        "tracking.system_metrics=true",
    )
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "2")
    metrics = train_experiment(cfg, out)
    return {"metrics": metrics, "out": out, "cfg": cfg, "progress": progress(out)}


def progress(out: Path) -> list[dict[str, Any]]:
    """The run's ``progress.jsonl`` events (starts, resumes, checkpoints, injected failures)."""
    path = out / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
