"""Object storage end to end, on a real S3 API (moto's server on 127.0.0.1) and a real two-node Ray cluster.

One cluster serves the module: a head (3 CPUs) and a second node (1 CPU), ``ray start --head`` and
``ray start --address``, each its own process tree, started once after the S3 fixture set the
``AWS_*`` environment (Ray's processes keep the environment they start with).

* round trip: ``recsys data synth`` → s3, 2 Ray workers on one node (STRICT_PACK) reading from s3 with
  the run folder, Ray's ``storage_path`` and checkpoints in s3; one worker process SIGKILLed after
  a checkpoint (the run resumes from it, from s3); ``--resume`` of the finished run; ``recsys
  export`` → s3; ``recsys serve --model s3://...`` with a hot reload when a new artifact is
  published over the old one;
* two nodes: workers spread over both, every process of the second node SIGKILLed by PID after a
  checkpoint, the run finishes on the head from the last checkpoint in s3 (the module's last test).

Both compare test AUC with one uninterrupted 2-worker run on the same data and cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

from recsys.cli import main
from recsys.storage import StoragePath
from tests.integration.conftest import ROOT, experiment, free_port
from tests.s3_server import BUCKET, s3_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # setup + call: ~12 min at load average 40 on 2 cores
ROWS = 20_000  # 16k train rows: 31 steps a worker in the one epoch, checkpoints at 10, 20, 30 and the epoch's end


def _events(out: StoragePath) -> list[dict[str, Any]]:
    path = out / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def s3_data(s3_server) -> str:  # noqa: F811
    uri = f"s3://{BUCKET}/data/small"
    assert main(["data", "synth", "--out", uri, "--rows", str(ROWS), "--profile", "small", "--seed", "3"]) == 0
    return uri


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory) -> str:
    """One MLflow store for the module's runs (its tables are created once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('s3-mlflow')}/mlflow.db"


def _cfg(data: str, db: str, *extra: str):  # type: ignore[no-untyped-def]
    return experiment(data, "training.workers=2", "training.epochs=1", "training.max_failures=2", f"tracking.tracking_uri={db}", *extra)


def _ray(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _sigkill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL ``proc`` and every descendant, each by PID; returns the PIDs."""
    import psutil

    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(30)
    return [p.pid for p in procs]


@pytest.fixture(scope="module")
def cluster(s3_server) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The module's two-node cluster, this process connected to it as a driver."""
    import ray

    from recsys.training.ray_trainer import init_ray

    ray.shutdown()  # a local Ray of an earlier test: this module joins its own cluster
    assert os.environ.get("RAY_AUTH_MODE") == "disabled"  # set by the conftest: a local test cluster needs no token
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    temp = tempfile.mkdtemp(prefix="ray18-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = _ray("--head", f"--port={port}", "--num-cpus=3", f"--temp-dir={temp}", "--include-dashboard=false", env=env)
    second: subprocess.Popen | None = None
    try:
        second = _ray(f"--address={address}", "--num-cpus=1", env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                init_ray(address)
                if len([n for n in ray.nodes() if n["Alive"]]) == 2:
                    break
            except Exception:
                pass
            ray.shutdown()
            assert time.monotonic() < deadline, "the two-node cluster did not come up"
            time.sleep(0.5)
        yield {"address": address, "env": env, "second": second, "head_node": ray.get_runtime_context().get_node_id()}
    finally:
        ray.shutdown()
        for proc in (second, head):
            if proc is not None and proc.poll() is None:
                _sigkill_tree(proc)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def baseline(s3_data, cluster, tracking_db) -> dict[str, Any]:
    """One uninterrupted 2-worker run, data and run folder in s3."""
    from recsys.training.run import train_experiment

    out = StoragePath(f"s3://{BUCKET}/runs/baseline")
    return {"metrics": train_experiment(_cfg(s3_data, tracking_db), out), "out": out}


def _kill_after_checkpoint(out: StoragePath, step: int, kill: Callable[[], Any], failures: list[BaseException]) -> threading.Thread:
    """A thread that waits for a checkpoint at ``step`` or later in ``progress.jsonl``, then calls ``kill``."""

    def watch() -> None:
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if any(e["event"] == "checkpoint" and e["step"] >= step for e in _events(out)):
                    kill()
                    return
                time.sleep(0.2)
            raise TimeoutError(f"no checkpoint at step >= {step} in {out}/progress.jsonl")
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _recovery(events: list[dict[str, Any]], killed_at: int) -> tuple[int, int]:
    """(step of the last checkpoint recorded before the restart, step the restart resumed from).

    A checkpoint event is written once Ray registered the checkpoint, so the restart resumes
    from that step (or from a later one registered in the instant before the kill)."""
    resume = next((i for i, e in enumerate(events) if e["event"] == "resume"), None)
    assert resume is not None, json.dumps(events)
    before = [e["step"] for e in events[:resume] if e["event"] == "checkpoint"]
    assert before and before[-1] >= killed_at
    return before[-1], events[resume]["step"]


def _serve(model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", "--model", model, "--port", str(port), "--poll-interval", "0.3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the service did not become ready")


def test_s3_round_trip_with_a_sigkilled_worker(s3_data, cluster, baseline, tracking_db):
    from recsys.training.run import train_experiment

    out = StoragePath(f"s3://{BUCKET}/runs/killed")
    failures: list[BaseException] = []
    killed: dict[str, Any] = {}

    def kill_rank_1() -> None:
        worker = json.loads((out / "workers" / "rank-1.json").read_text())
        killed.update(worker)
        os.kill(worker["pid"], signal.SIGKILL)

    watcher = _kill_after_checkpoint(out, 10, kill_rank_1, failures)
    metrics = train_experiment(_cfg(s3_data, tracking_db, "training.placement_strategy=STRICT_PACK"), out)
    watcher.join(5)
    assert not failures, failures
    assert killed["node_id"] == cluster["head_node"]  # STRICT_PACK: both workers on the head (3 CPUs), the single-node case
    assert json.loads((out / "workers" / "rank-0.json").read_text())["node_id"] == cluster["head_node"]
    events = _events(out)
    last, resumed = _recovery(events, 10)
    assert resumed >= last >= 10  # from the last checkpoint in s3, not from step 0
    relaunched = json.loads((out / "workers" / "rank-1.json").read_text())
    assert relaunched["pid"] != killed["pid"]
    assert any(name.startswith("ray/train/checkpoint_") for name in out.files())
    assert abs(metrics["test_auc"] - baseline["metrics"]["test_auc"]) < 0.01, (metrics, baseline["metrics"])
    assert metrics["test_rows"] == baseline["metrics"]["test_rows"]
    print(
        f"\nsingle node: SIGKILL of rank 1 (pid {killed['pid']}) after step {last}; resumed from step {resumed}; "
        f"test AUC {metrics['test_auc']:.6f} vs uninterrupted {baseline['metrics']['test_auc']:.6f}"
    )

    # --resume of the finished run: every phase is read back from s3, same metrics
    again = train_experiment(_cfg(s3_data, tracking_db, "training.placement_strategy=STRICT_PACK"), out, resume=True)
    assert again["test_auc"] == metrics["test_auc"]

    # export to s3, serve from s3, publish a new artifact over it and watch the hot reload
    artifact = f"s3://{BUCKET}/artifacts/ctr"
    assert main(["export", "--run", str(out), "--out", artifact]) == 0
    manifest = json.loads(StoragePath(artifact + "/manifest.json").read_text())
    assert manifest["dtype"] == "fp32" and manifest["source_run"] == str(out)
    assert main(["export", "--run", str(out), "--out", artifact]) == 2  # no silent overwrite
    proc, url = _serve(artifact)
    try:
        first = httpx.get(f"{url}/v1/metadata").json()
        assert first["dtype"] == "fp32"
        items = [{"feature": "C1", "value": "C1_3"}, {"feature": "C2", "value": "never-seen"}]
        before = httpx.post(f"{url}/v1/embeddings", json={"items": items}).json()
        assert len(before["vectors"]) == 2
        assert main(["export", "--run", str(out), "--out", artifact, "--dtype", "int8", "--overwrite"]) == 0
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/metadata").json()["dtype"] != "int8":
            assert time.monotonic() < deadline, "the service did not reload the new artifact"
            time.sleep(0.3)
        after = httpx.post(f"{url}/v1/embeddings", json={"items": items}).json()
        assert after["version"] != before["version"] and len(after["vectors"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_two_node_run_survives_losing_a_node(s3_data, cluster, baseline, tracking_db, tmp_path):
    out = StoragePath(f"s3://{BUCKET}/runs/two-node")
    failures: list[BaseException] = []
    placed: dict[str, Any] = {}
    second = cluster["second"]

    def kill_second_node() -> None:
        placed.update({str(r): json.loads((out / "workers" / f"rank-{r}.json").read_text())["node_id"] for r in (0, 1)})
        placed["pids"] = _sigkill_tree(second)

    config = tmp_path / "two-node.yaml"  # the driver is its own process, as a job on a cluster would be
    config.write_text(yaml.safe_dump(_cfg(s3_data, tracking_db, "training.placement_strategy=SPREAD").model_dump(mode="json")))
    watcher = _kill_after_checkpoint(out, 10, kill_second_node, failures)
    driver = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "train", "--config", str(config), "--address", cluster["address"], "--out", str(out)],
        cwd=ROOT,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    watcher.join(5)
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert not failures, failures
    assert placed["0"] != placed["1"], "the workers were not placed on both nodes"
    assert second.poll() is not None and len(placed["pids"]) > 1
    events = _events(out)
    last, resumed = _recovery(events, 10)
    assert resumed >= last >= 10
    assert abs(metrics["test_auc"] - baseline["metrics"]["test_auc"]) < 0.01, (metrics, baseline["metrics"])
    print(
        f"\ntwo nodes: SIGKILL of the second node's {len(placed['pids'])} processes after step {last}; resumed from step "
        f"{resumed}; test AUC {metrics['test_auc']:.6f} vs uninterrupted {baseline['metrics']['test_auc']:.6f}"
    )
