"""An in-process run (no Ray) with its dataset and run folder on S3 (moto on 127.0.0.1) gives
exactly the metrics and weights of the same run on local folders, and logs the same artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from recsys.config import load_config
from recsys.data.synthetic import generate
from recsys.features import DATASET_FILE
from recsys.storage import StoragePath, load_tensors, published
from tests.s3_server import BUCKET, s3_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


def _cfg(data: str, tmp: Path, name: str):  # type: ignore[no-untyped-def]
    return load_config(
        ROOT / "configs/quickstart.yaml",
        [
            f"data.path={data}",
            "embedding.method=hash",
            "embedding.compression=4",
            "training.epochs=2",
            "training.batch_size=256",
            "training.max_steps_per_epoch=10",
            "training.progress=false",
            "tracking.system_metrics=false",
            f"tracking.tracking_uri=sqlite:///{tmp}/mlflow-{name}.db",
        ],
    )


def test_in_process_run_on_s3_equals_the_local_run(s3_server, tmp_path):  # noqa: F811
    from recsys.training.run import train_experiment

    local_data = tmp_path / "data"
    generate(local_data, rows=6000, profile="small", seed=2, progress=False)
    uri = f"s3://{BUCKET}/local-run/data"
    with published(uri, DATASET_FILE) as staged:
        shutil.copytree(local_data, staged)
    local = train_experiment(_cfg(str(local_data), tmp_path, "local"), tmp_path / "run")
    out = StoragePath(f"s3://{BUCKET}/local-run/run")
    remote = train_experiment(_cfg(uri, tmp_path, "s3"), out)
    for m in (local, remote):
        m.pop("train_samples_per_s")
    assert remote == local
    assert json.loads((out / "metrics.json").read_text())["test_auc"] == local["test_auc"]
    a, b = load_tensors(tmp_path / "run/phases/train/weights.safetensors"), load_tensors(out / "phases/train/weights.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    import mlflow

    def logged(name: str) -> list[str]:
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow-{name}.db")
        (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
        return sorted(a.path for a in client.list_artifacts(run.info.run_id))

    assert logged("s3") == logged("local") and "metrics.json" in logged("s3")
