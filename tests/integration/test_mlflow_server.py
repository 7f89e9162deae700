"""A real MLflow tracking server on 127.0.0.1: a 2-worker run logged and registered to it, the
server dying mid-run (training finishes, calls spooled and replayed), and required tracking."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import recsys.training.tracking as tracking
from recsys.cli import main
from recsys.features import id_column, load_dataset_spec
from tests.integration.conftest import ROOT, Server, experiment, free_port
from tests.serving_support import raw_strings, reference_model, reference_probs, test_batches


def test_run_is_logged_to_the_server_and_registered_by_alias(ray_run, mlflow_server, small_data):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ray-test").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["training.workers"] == "2" and run.data.params["embedding.method"] == "full"
    assert run.data.metrics["test_auc"] == pytest.approx(ray_run["metrics"]["test_auc"])
    assert [m.step for m in client.get_metric_history(run_id, "valid_auc")][:2] == [0, 1]  # per epoch, then the final
    losses = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert losses[0] == 5 and losses == sorted(set(losses))  # rank 0 logs, once per logged step
    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "config.yaml", "learning_curve.png", "phases"} <= artifacts

    spec = load_dataset_spec(small_data)
    strings = raw_strings(small_data)
    table = pq.read_table(small_data / spec.splits["test"].files[0]).slice(0, 256)
    frame = pd.DataFrame(
        {
            **{f.name: np.expm1(table.column(f.name).to_numpy()) for f in spec.dense_fields},
            **{f.name: [strings[f.name][i] for i in table.column(id_column(f.name)).to_pylist()] for f in spec.sparse_fields},
        }
    )
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        model = mlflow.pyfunc.load_model("models:/ctr@champion")
    finally:
        mlflow.set_tracking_uri(None)
    expected = reference_probs(reference_model(ray_run["out"]), test_batches(small_data, "index", batch_size=256)[:1])
    np.testing.assert_allclose(model.predict(frame), expected, rtol=0, atol=2e-5)


def _stop_when_logging(server: Server, seen: threading.Event, restarted: threading.Event) -> None:
    """Stop the server once the run has logged a train loss; start it again 3 s later."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not seen.is_set():
        try:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and "train_loss" in runs[0].data.metrics:
                seen.set()
        except Exception:  # noqa: BLE001 - the server may still be starting
            pass
        time.sleep(0.2)
    server.stop()
    time.sleep(3)
    server.start()
    restarted.set()


def test_server_dying_mid_run_spools_and_replays(small_data, tmp_path, monkeypatch):
    from recsys.training.run import train_experiment

    monkeypatch.setattr(tracking, "PROBE_EVERY_S", 1.0)
    monkeypatch.setattr(tracking, "BACKOFF_S", (0.2, 0.2))
    server = Server(free_port(), tmp_path / "mlflow.db").start()
    seen, restarted = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_stop_when_logging, args=(server, seen, restarted), daemon=True)
    watcher.start()
    cfg = experiment(small_data, "training.epochs=3", "data.max_eval_rows=2000", f"tracking.tracking_uri={server.uri}", "tracking.experiment=outage")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = train_experiment(cfg, tmp_path / "run")
        watcher.join(120)
        assert seen.is_set() and restarted.is_set()
        assert any("unreachable" in str(w.message) for w in caught), [str(w.message) for w in caught]
        if list((tmp_path / "run").glob("mlflow_spool*.jsonl")):  # the run ended before the server was back
            assert tracking.replay_folder(tmp_path / "run")
        assert not list((tmp_path / "run").glob("mlflow_spool*.jsonl"))

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(set(steps)) == list(range(5, max(steps) + 1, 5)) and max(steps) >= 3 * 30
        assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_auc")][:3] == [0, 1, 2]
    finally:
        watcher.join(60)
        server.stop()


def test_required_tracking_with_an_unreachable_server_fails_fast(small_data, tmp_path, capsys):
    start = time.monotonic()
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--out",
            str(tmp_path / "run"),
            "--tracking-uri",
            f"http://127.0.0.1:{free_port()}",
            "--set",
            f"data.path={small_data}",
            "--set",
            "tracking.required=true",
        ]
    )
    assert code == 2
    assert "unreachable and tracking.required is true" in capsys.readouterr().err
    assert time.monotonic() - start < 30
    assert not (tmp_path / "run" / "metrics.json").exists()
