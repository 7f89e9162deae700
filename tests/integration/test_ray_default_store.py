"""A 2-worker ``recsys train`` on the default tracking store (``sqlite:///mlflow.db``, relative to
the working directory): the workers log into the user's store, not one in Ray's session folder."""

from __future__ import annotations

from pathlib import Path

from recsys.cli import main
from tests.integration.conftest import ROOT


def test_two_workers_log_step_metrics_to_the_default_store(small_data, ray_cluster, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--workers",
            "2",
            "--out",
            "run",
            "--set",
            f"data.path={small_data}",
            "--set",
            "training.epochs=1",
            "--set",
            "training.batch_size=256",
            "--set",
            "training.max_steps_per_epoch=10",
            "--set",
            "training.log_every=5",
            "--set",
            "training.progress=false",
            "--set",
            "data.max_eval_rows=2000",
        ]
    )
    assert code == 0
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "run" / "metrics.json").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [5, 10]  # rank 0's steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_train_loss")] == [0]
    assert not list(Path("run").glob("mlflow_spool*.jsonl"))  # nothing left unsent
