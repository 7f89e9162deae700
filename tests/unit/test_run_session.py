"""``tracking_session``: one MLflow run per run, ended FAILED or FINISHED, the run folder logged, workers' spools replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

import recsys.training.tracking as tracking
from recsys.config import ExperimentConfig
from recsys.runfolder import RunFolder
from recsys.training.session import tracking_session
from recsys.training.tracking import make_tracker
from tests.unit.test_tracking_spool import FakeClient


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """MLflow's client replaced by a fake server (``down`` makes it unreachable)."""
    import mlflow

    fake = FakeClient()
    monkeypatch.setattr(mlflow, "MlflowClient", lambda tracking_uri=None: fake)
    monkeypatch.setattr(tracking, "BACKOFF_S", (0.0, 0.0))
    return fake


def _cfg() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "data": {"path": "data/x"},
            "embedding": {"method": "hash", "compression": 4},
            "tracking": {"tracking_uri": "http://127.0.0.1:1", "system_metrics": False},
        }
    )


def test_a_run_that_raises_ends_failed_with_its_params_logged(client: FakeClient, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracking_session(_cfg(), tmp_path) as session:
        assert session.tracker.run_id == "run0"
        raise RuntimeError("boom")
    run = client.runs["run0"]
    assert run["status"] == "FAILED" and run["params"]["embedding.method"] == "hash"
    assert run["tags"] == {"method": "hash", "model": "dlrm", "workers": "1"} and run["artifacts"] == []


def test_a_finished_run_writes_and_logs_its_folder(client: FakeClient, tmp_path: Path) -> None:
    phase = RunFolder(tmp_path).phase("train")
    phase.root.mkdir(parents=True)
    for path in (phase.weights, phase.state, phase.summary, phase.learning_curve):
        path.write_text("x")
    with tracking_session(_cfg(), tmp_path) as session:
        session.finish({"test_auc": 0.75, "phases": {"train": {}}})
    run = client.runs["run0"]
    assert run["status"] == "FINISHED" and [(k, v) for k, v, *_ in run["metrics"]] == [("test_auc", 0.75)]
    assert run["artifacts"] == [
        ("metrics.json", None),
        ("config.yaml", None),
        ("learning_curve.png", "phases/train"),
        ("summary.json", "phases/train"),
        ("weights.safetensors", "phases/train"),
        ("state.safetensors", "phases/train"),
    ]
    folder = RunFolder(tmp_path)
    assert folder.read_metrics() == {"test_auc": 0.75, "phases": {"train": {}}} and folder.read_config() == _cfg()


def test_the_session_replays_what_a_worker_spooled_when_it_ends(client: FakeClient, tmp_path: Path) -> None:
    cfg = _cfg()
    with tracking_session(cfg, tmp_path) as session:
        worker = make_tracker(cfg.tracking, run_dir=tmp_path, run_id=session.tracker.run_id)  # rank 0 of a Ray run
        client.down = True
        with pytest.warns(RuntimeWarning):
            worker.log_metrics({"train_loss": 0.5}, step=3)
            worker.wait()
            worker.close()
        assert (tmp_path / "mlflow_spool.rank0.jsonl").exists()
        client.down = False
    run = client.runs["run0"]
    assert ("train_loss", 0.5, 3) in [m[:3] for m in run["metrics"]] and run["status"] == "FINISHED"
    assert not list(tmp_path.glob("mlflow_spool*.jsonl"))
