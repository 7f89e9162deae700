"""``recsys mlflow-server``: a shared MLflow tracking server on 127.0.0.1.

Equivalent to::

    mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db \\
        --artifacts-destination ./mlartifacts --workers 2

Runs and the model registry live in the sqlite store; artifacts are proxied by the server
(clients upload through HTTP, so they need no access to the artifact folder). Point training
at it with ``--tracking-uri http://127.0.0.1:5000`` or ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def server_command(port: int, backend_store_uri: str, artifacts_destination: str, host: str = "127.0.0.1", workers: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        str(workers),
    ]


def wait_until_up(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url/health`` until the server answers; raise if it does not (or its process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {url} did not answer within {timeout_s:.0f} s")


@dataclass
class LocalServer:
    """A background ``mlflow server`` on 127.0.0.1 with a sqlite store at ``store`` (artifacts
    beside it, or at the URI ``artifacts``), in its own process group so that ``stop`` ends its
    workers too."""

    port: int
    store: Path
    process: subprocess.Popen | None = None
    artifacts: str | None = None  # e.g. s3://bucket/mlartifacts (boto3, the AWS_* environment)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> "LocalServer":
        log = (self.store.parent / f"mlflow-server-{self.port}.log").open("ab")
        cmd = server_command(self.port, f"sqlite:///{self.store}", self.artifacts or str(self.store.parent / "mlartifacts"), workers=1)
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(self.uri, timeout_s, self.process)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:  # a loaded machine: its workers did not finish shutting down
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self.process = None


def run_server(port: int, backend_store_uri: str, artifacts_destination: str) -> int:
    """Run the server in the foreground (``recsys mlflow-server``) until interrupted."""
    print(f"MLflow tracking server on http://127.0.0.1:{port} (store {backend_store_uri}, artifacts {artifacts_destination})")
    print(f"train against it with: recsys train --tracking-uri http://127.0.0.1:{port} ...")
    try:
        return subprocess.call(server_command(port, backend_store_uri, artifacts_destination))
    except KeyboardInterrupt:
        return 0
