"""Helpers of the Feast tests and benchmark: a real Redis server, applying a repo, known values."""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from recsys.features import OOV_INDEX
from recsys.serving.store import Store

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a free port, no persistence; ``stop()`` ends it."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install -y redis-server (.ci/run installs it)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.time() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    @property
    def connection(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


def env() -> dict[str, str]:
    """The environment of a ``feast`` / ``recsys`` subprocess: this tree first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def feast_cli(repo: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``feast`` command line on ``repo``."""
    cmd = [sys.executable, "-m", "feast.cli.cli", "-c", str(repo), *args]
    return subprocess.run(cmd, cwd=repo, env=env(), capture_output=True, text=True, timeout=timeout)


def start_feast_serve(repo: Path, port: int) -> subprocess.Popen:
    """``feast serve`` on 127.0.0.1 in its own process group (gunicorn master and worker); ``stop_feast_serve`` ends it."""
    cmd = [sys.executable, "-m", "feast.cli.cli", "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, cwd=repo, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_feast_serve(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``/health`` until it answers 200 (a dead server fails at once)."""
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"feast serve at {url} did not start (exit code {proc.poll()})")
        time.sleep(0.3)


def stop_feast_serve(proc: subprocess.Popen) -> None:
    """SIGINT, then the group's SIGKILL after 5 s: gunicorn waits 30 s for Feast's worker, which does not exit on its own."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def repo_objects(repo: Path) -> list:
    """The Feast objects a repo's ``features.py`` defines (what ``feast apply`` registers)."""
    from feast import Entity, FeatureView, FileSource

    ns = runpy.run_path(str(repo / "features.py"))
    return [v for v in ns.values() if isinstance(v, (Entity, FeatureView, FileSource))]


def apply_in_process(repo: Path):  # type: ignore[no-untyped-def]
    """``FeatureStore.apply`` of the repo's definitions (the same ``update`` path as ``feast apply``)."""
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(repo))
    fs.apply(repo_objects(repo))
    return fs


def known_values(store: Store, raw: dict[str, dict[int, str]], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` ``(field, raw value)`` pairs of values the artifact knows (in the vocabulary, for index methods)."""
    pairs = [(f, v) for f in store.features for v in raw[f].values()]
    if store.encoder.vocabularies is not None:
        position, ids = store.encoder.raw_pairs(pairs)
        keep = store.encoder.vocabularies.lookup_present(position, ids) != OOV_INDEX
        pairs = [p for p, k in zip(pairs, keep) if k]
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)]


def online_vectors(fs, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray | None]:  # type: ignore[no-untyped-def]
    """``get_online_features`` of each pair, one call per field."""
    out: dict[tuple[str, str], np.ndarray | None] = {}
    for field in sorted({f for f, _ in pairs}):
        values = [v for f, v in pairs if f == field]
        got = fs.get_online_features(features=[f"{field}:{field}_embedding"], entity_rows=[{field: v} for v in values]).to_dict()
        for v, vec in zip(values, got[f"{field}_embedding"]):
            out[(field, v)] = None if vec is None else np.asarray(vec, np.float32)
    return out
