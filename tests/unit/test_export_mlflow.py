"""`recsys export --run RUN_ID`: the checkpoint of an MLflow run resolved through the MLflow client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recsys.cli import main
from recsys.export import RunNotFound, log_checkpoint, read_manifest, resolve_run
from tests.serving_support import ensure_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    return ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("export-by-id")
    return uri, client, experiment


def test_export_by_run_id_equals_export_of_the_folder(runs, store, tmp_path, capsys):
    data, run = runs
    uri, client, experiment = store
    run_id = client.create_run(experiment, run_name="hash").info.run_id
    logged = log_checkpoint(run["hash"], run_id, uri)
    assert "config.yaml" in logged and "phases/train/weights.safetensors" in logged
    client.set_terminated(run_id)

    by_dir, by_id = tmp_path / "by-dir", tmp_path / "by-id"
    assert main(["export", "--run", str(run["hash"]), "--out", str(by_dir), "--dtype", "int8", "--data", str(data)]) == 0
    assert main(["export", "--run", run_id, "--tracking-uri", uri, "--out", str(by_id), "--dtype", "int8", "--data", str(data)]) == 0
    a, b = read_manifest(by_dir), read_manifest(by_id)
    assert b.source_run == f"mlflow-run:{run_id}@{uri}"
    assert set(a.files) == set(b.files)
    for name in a.files:  # same tensors (safetensors orders its header metadata at random, so bytes may differ there)
        if name.endswith(".safetensors"):
            x, y = load_file(str(by_dir / name)), load_file(str(by_id / name))
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
        else:
            assert a.files[name].sha256 == b.files[name].sha256, name
    assert (a.method, a.dtype, a.tables, a.metrics) == (b.method, b.dtype, b.tables, b.metrics)
    assert a.metrics == {
        k: float(v)
        for k, v in json.loads((run["hash"] / "metrics.json").read_text()).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    # the `runs:/<id>` form names the same run; the temporary download is removed afterwards
    with resolve_run(f"runs:/{run_id}", uri) as (folder, source):
        assert (folder / "config.yaml").is_file() and source == f"mlflow-run:{run_id}@{uri}"
    assert not folder.exists()


def test_unknown_run_id_is_a_clear_error(store, tmp_path, capsys):
    uri, _, _ = store
    missing = "0123456789abcdef0123456789abcdef"
    assert main(["export", "--run", missing, "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert missing in err and "no MLflow run with this id" in err and uri in err
    assert not (tmp_path / "x").exists()
    assert main(["export", "--run", "no/such/folder", "--out", str(tmp_path / "y")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_run_without_a_checkpoint_names_what_is_missing(store, tmp_path):
    uri, client, experiment = store
    run_id = client.create_run(experiment, run_name="metrics-only").info.run_id
    (tmp_path / "metrics.json").write_text("{}")
    client.log_artifact(run_id, str(tmp_path / "metrics.json"))
    with pytest.raises(RunNotFound, match="has no checkpoint among its artifacts.*log_checkpoint"), resolve_run(run_id, uri):
        pass
