"""The MLflow tracker survives an unreachable server: retries, spools to JSONL, replays in order."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

import recsys.training.tracking as tracking
from recsys.config import TrackingConfig
from recsys.tracking_uri import absolute_uri
from recsys.training.tracking import MlflowTracker, TrackingUnavailable, make_tracker, replay_folder, tracking_uri
from recsys.training.tracking_spool import PENDING, Spool


class FakeClient:
    """An MLflow client whose server is down while ``down`` is True."""

    def __init__(self) -> None:
        self.down = False
        self.runs: dict[str, dict] = {}
        self.calls: list[str] = []

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise MlflowException("API request to http://127.0.0.1:1/api failed with exception ConnectionRefused")

    def get_experiment_by_name(self, name):  # type: ignore[no-untyped-def]
        self._check("get_experiment")
        return SimpleNamespace(experiment_id="1")

    def create_run(self, experiment_id, run_name=None, tags=None):  # type: ignore[no-untyped-def]
        self._check("create_run")
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {"metrics": [], "params": {}, "artifacts": [], "status": "RUNNING", "tags": tags}
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def log_batch(self, run_id, metrics=(), params=()):  # type: ignore[no-untyped-def]
        self._check("log_batch")
        if run_id not in self.runs:  # what a store answers for a run it does not hold
            raise MlflowException(f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        for p in params:
            if p.key == "bad":
                raise MlflowException("invalid value", error_code=INVALID_PARAMETER_VALUE)
            self.runs[run_id]["params"][p.key] = p.value
        self.runs[run_id]["metrics"] += [(m.key, m.value, m.step, m.timestamp) for m in metrics]

    def log_artifact(self, run_id, path, folder=None):  # type: ignore[no-untyped-def]
        self._check("log_artifact")
        self.runs[run_id]["artifacts"].append((Path(path).name, folder))

    def set_terminated(self, run_id, status="FINISHED"):  # type: ignore[no-untyped-def]
        self._check("set_terminated")
        self.runs[run_id]["status"] = status


@pytest.fixture
def client(monkeypatch) -> FakeClient:
    fake = FakeClient()
    import mlflow

    monkeypatch.setattr(mlflow, "MlflowClient", lambda tracking_uri=None: fake)
    monkeypatch.setattr(tracking, "BACKOFF_S", (0.0, 0.0))
    return fake


def _cfg(**kw) -> TrackingConfig:
    return TrackingConfig(tracking_uri="http://127.0.0.1:1", **kw)


def test_server_down_mid_run_spools_then_replays_in_order(client, tmp_path):
    tracker = make_tracker(_cfg(), run_dir=tmp_path)
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.wait()
    client.down = True
    with pytest.warns(RuntimeWarning, match="unreachable"):
        tracker.log_metrics({"loss": 0.9}, step=2)
        tracker.wait()
    tracker.log_metrics({"loss": 0.8}, step=3)
    tracker.wait()
    spool = Spool(tmp_path / "mlflow_spool.jsonl")
    assert [r["step"] for r in spool.read()] == [2, 3]
    client.down = False
    tracker.close()
    run = client.runs["run0"]
    assert [(k, s) for k, _, s, _ in run["metrics"]] == [("loss", 1), ("loss", 2), ("loss", 3)]
    assert run["status"] == "FINISHED"
    assert not spool.path.exists()


def test_probe_replays_at_the_next_call_once_the_server_is_back(client, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "PROBE_EVERY_S", 0.0)
    tracker = make_tracker(_cfg(), run_dir=tmp_path)
    client.down = True
    with pytest.warns(RuntimeWarning):
        tracker.log_metrics({"loss": 0.5}, step=5)
        tracker.wait()
    assert tracker.offline
    client.down = False
    tracker.log_metrics({"loss": 0.4}, step=6)
    tracker.wait()
    assert not tracker.offline
    assert [s for _, _, s, _ in client.runs["run0"]["metrics"]] == [5, 6]


def test_unreachable_at_start_creates_the_run_on_replay(client, tmp_path):
    client.down = True
    with pytest.warns(RuntimeWarning):
        tracker = make_tracker(_cfg(), tags={"method": "hash"}, run_dir=tmp_path)
    assert tracker.run_id.startswith(PENDING)
    tracker.log_params({"a": 1})
    tracker.log_metrics({"auc": 0.7}, step=0)
    (tmp_path / "metrics.json").write_text("{}")
    tracker.log_artifact(tmp_path / "metrics.json")
    with pytest.warns(RuntimeWarning, match="mlflow-replay"):
        tracker.close()
    assert client.runs == {}
    client.down = False
    assert replay_folder(tmp_path)
    (run,) = client.runs.values()
    assert run["params"] == {"a": "1"} and run["metrics"][0][:3] == ("auc", 0.7, 0)
    assert run["artifacts"] == [("metrics.json", None)] and run["status"] == "FINISHED"
    assert run["tags"] == {"method": "hash"}


def test_worker_spool_of_a_pending_run_is_replayed_by_the_driver(client, tmp_path):
    client.down = True
    with pytest.warns(RuntimeWarning):
        driver = make_tracker(_cfg(), run_dir=tmp_path)
        worker = make_tracker(_cfg(), run_dir=tmp_path, run_id=driver.run_id)
        worker.log_metrics({"train_loss": 0.3}, step=10)
        worker.wait()
    with pytest.warns(RuntimeWarning, match="still unreachable"):
        worker.close()  # attached: never ends the run
    client.down = False
    driver.close("FINISHED", others=[tmp_path / "mlflow_spool.rank0.jsonl"])
    (run,) = client.runs.values()
    assert run["metrics"][0][:3] == ("train_loss", 0.3, 10) and run["status"] == "FINISHED"
    assert not list(tmp_path.glob("mlflow_spool*.jsonl"))


def test_leftover_spool_of_a_crashed_process_is_replayed(client, tmp_path):
    tracker = make_tracker(_cfg(), run_dir=tmp_path)
    Spool(tmp_path / "mlflow_spool.rank0.jsonl").append({"op": "metrics", "run": tracker.run_id, "metrics": {"x": 1.0}, "step": 7, "ts": 1})
    again = make_tracker(_cfg(), run_dir=tmp_path, run_id=tracker.run_id)
    assert again.offline
    again.close()
    assert client.runs["run0"]["metrics"] == [("x", 1.0, 7, 1)]


def test_rejected_call_is_dropped_with_a_warning(client, tmp_path):
    tracker = make_tracker(_cfg(), run_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="rejected"):
        tracker.log_params({"bad": 1})
    assert not tracker.offline and not (tmp_path / "mlflow_spool.jsonl").exists()


@pytest.mark.timeout(180)  # MLflow's own HTTP retries against a closed port would take many minutes
def test_required_tracking_fails_fast_against_a_closed_port(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "BACKOFF_S", (0.1,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingUnavailable, match=f"127.0.0.1:{port}.*tracking.required"):
        MlflowTracker(TrackingConfig(tracking_uri=f"http://127.0.0.1:{port}", required=True), spool=tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists()


def test_spool_ignores_a_line_cut_short_by_a_crash(tmp_path):
    spool = Spool(tmp_path / "s.jsonl")
    spool.append({"op": "metrics", "step": 1})
    with spool.path.open("a") as f:
        f.write('{"op": "metr')
    assert spool.read() == [{"op": "metrics", "step": 1}]
    spool.rewrite([])
    assert not spool.path.exists()
    assert json.loads(json.dumps(spool.read())) == []


def test_call_to_a_run_the_store_lacks_is_spooled_and_replayed_by_the_driver(tmp_path, monkeypatch):
    """A worker whose store is not the driver's (an empty one): its calls are spooled, not dropped."""
    import mlflow

    stores: dict[str, FakeClient] = {}
    monkeypatch.setattr(mlflow, "MlflowClient", lambda tracking_uri=None: stores.setdefault(tracking_uri, FakeClient()))
    monkeypatch.setattr(tracking, "BACKOFF_S", (0.0,))
    driver = make_tracker(_cfg(), run_dir=tmp_path)
    worker = make_tracker(TrackingConfig(tracking_uri="http://127.0.0.1:2"), run_dir=tmp_path, run_id=driver.run_id)
    with pytest.warns(RuntimeWarning, match=f"Run with id={driver.run_id} not found"):
        worker.log_metrics({"train_loss": 0.3}, step=5)
        worker.wait()
    assert [r["step"] for r in Spool(tmp_path / "mlflow_spool.rank0.jsonl").read()] == [5]
    with pytest.warns(RuntimeWarning, match="mlflow-replay"):
        worker.close()
    driver.close("FINISHED", others=[tmp_path / "mlflow_spool.rank0.jsonl"])
    assert stores["http://127.0.0.1:1"].runs["run0"]["metrics"][0][:3] == ("train_loss", 0.3, 5)
    assert not list(tmp_path.glob("mlflow_spool*.jsonl"))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:////work/dir/mlflow.db"),
        ("sqlite:///sub/m.db?timeout=5", "sqlite:////work/dir/sub/m.db?timeout=5"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("sqlite://", "sqlite://"),
        ("mlruns", "file:///work/dir/mlruns"),
        ("./runs/../mlruns", "file:///work/dir/mlruns"),
        ("file:mlruns", "file:///work/dir/mlruns"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("/abs/mlruns", "/abs/mlruns"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://u@db/mlflow", "postgresql://u@db/mlflow"),
        ("databricks", "databricks"),
    ],
)
def test_relative_local_stores_are_made_absolute(uri, expected):
    assert absolute_uri(uri, Path("/work/dir")) == expected


def test_default_store_is_the_working_directorys_mlflow_db(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve()}/other.db"
