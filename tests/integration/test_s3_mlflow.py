"""MLflow's artifacts on object storage: a real ``mlflow server --artifacts-destination s3://...``
on 127.0.0.1 whose bucket is moto's S3 server, a run that logs and registers its model through
it, and the artifacts and the model read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.features import id_column, load_dataset_spec
from recsys.storage import StoragePath
from tests.integration.conftest import Server, experiment, free_port
from tests.s3_server import BUCKET, s3_server  # noqa: F401  (fixture)
from tests.serving_support import (
    raw_strings,
    reference_model,
    reference_probs,
    test_batches,
)


def test_artifacts_and_the_registered_model_round_trip_through_s3(s3_server, small_data, tmp_path):  # noqa: F811
    import mlflow

    from recsys.training.run import train_experiment

    destination = f"s3://{BUCKET}/mlartifacts"
    server = Server(free_port(), tmp_path / "mlflow.db", artifacts=destination).start(timeout_s=300)  # a loaded CI box: the server imports slowly
    try:
        cfg = experiment(
            small_data,
            "training.epochs=1",
            "data.max_train_rows=2048",
            "data.max_eval_rows=1024",
            f"tracking.tracking_uri={server.uri}",
            "tracking.experiment=s3-artifacts",
            "tracking.register_as=ctr-s3",
        )
        out = tmp_path / "run"
        train_experiment(cfg, out)
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("s3-artifacts").experiment_id])
        run_id = run.info.run_id

        stored = StoragePath(destination).files()  # the objects the server wrote into the bucket
        assert any(name.endswith(f"{run_id}/artifacts/metrics.json") for name in stored), stored
        assert any(name.endswith("/MLmodel") for name in stored), stored
        (tmp_path / "dl").mkdir()
        logged = client.download_artifacts(run_id, "metrics.json", str(tmp_path / "dl"))
        assert json.loads(Path(logged).read_text()) == json.loads((out / "metrics.json").read_text())

        spec = load_dataset_spec(small_data)
        strings = raw_strings(small_data)
        table = pq.read_table(small_data / spec.splits["test"].files[0]).slice(0, 64)
        frame = pd.DataFrame(
            {
                **{f.name: np.expm1(table.column(f.name).to_numpy()) for f in spec.dense_fields},
                **{f.name: [strings[f.name][i] for i in table.column(id_column(f.name)).to_pylist()] for f in spec.sparse_fields},
            }
        )
        mlflow.set_tracking_uri(server.uri)
        try:
            model = mlflow.pyfunc.load_model("models:/ctr-s3@champion")  # downloaded from s3 through the server
        finally:
            mlflow.set_tracking_uri(None)
        expected = reference_probs(reference_model(out), test_batches(small_data, "index", batch_size=64)[:1])
        np.testing.assert_allclose(model.predict(frame), expected, rtol=0, atol=2e-5)
    finally:
        server.stop()
