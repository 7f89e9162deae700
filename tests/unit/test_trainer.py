"""End-to-end training on small planted data: metrics, files, MLflow, checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from recsys.config import load_config
from recsys.data.synthetic import generate
from recsys.training.checkpoint import load_weights, plain_state_dict, save_weights

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small"
    generate(out, rows=60_000, profile="small", seed=3, progress=False)
    return out


def _cfg(data: Path, tmp_path: Path, *extra: str):
    return load_config(
        ROOT / "configs/quickstart.yaml",
        [
            f"data.path={data}",
            "training.epochs=2",
            "training.batch_size=512",
            "training.progress=false",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            *extra,
        ],
    )


@pytest.mark.parametrize("method", ["full", "hash"])
def test_train_reaches_clearly_above_chance_and_writes_results(small_data, tmp_path, monkeypatch, method):
    from recsys.training.run import train_experiment

    monkeypatch.chdir(tmp_path)  # MLflow artifacts land under the test's folder
    extra = ["embedding.compression=4"] if method == "hash" else []
    cfg = _cfg(small_data, tmp_path, f"embedding.method={method}", *extra)
    metrics = train_experiment(cfg, tmp_path / "run")
    assert metrics["test_auc"] > 0.65, metrics
    assert metrics["oracle_test_auc"] >= metrics["test_auc"] - 0.02
    assert 0 < metrics["test_logloss"] < 0.69
    assert metrics["epochs"] >= 1 and metrics["train_samples_per_s"] > 0
    if method == "hash":
        assert metrics["compression_ratio"] >= 4
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["embedding.method"] == method
    assert run.data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "learning_curve.png"} <= artifacts


def test_checkpoint_round_trip_through_dmp(small_data, tmp_path):
    import torch.distributed as dist

    from recsys.embeddings import MethodContext, build_method
    from recsys.features import load_dataset_spec
    from recsys.models import build_model
    from recsys.models.train import TrainModel
    from recsys.training.distributed import ensure_process_group, shard

    cfg = _cfg(small_data, tmp_path)
    spec = load_dataset_spec(small_data)

    def make():
        torch.manual_seed(0)
        ctx = MethodContext.from_spec(spec, 8)
        method = build_method("full", ctx)
        return shard(TrainModel(build_model(cfg.model.model_copy(update={"embedding_dim": 8}), method, len(spec.dense_fields))), method, cfg.training)

    started = ensure_process_group()
    try:
        a = make()
        with torch.no_grad():
            for p in a.module.parameters():
                p.add_(0.01)
        state = plain_state_dict(a.module)
        path = save_weights(a.module, tmp_path / "w.safetensors")
        b = make()
        assert any(not torch.equal(state[k], v) for k, v in plain_state_dict(b.module).items())
        load_weights(b.module, path)
        for k, v in plain_state_dict(b.module).items():
            assert torch.equal(state[k], v), k
        assert path.read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # safetensors, not a pickle
    finally:
        if started:
            dist.destroy_process_group()


def test_a_new_run_in_a_used_folder_starts_from_its_own_weights(small_data, tmp_path, monkeypatch):
    """Without --resume, what an earlier run left in the folder (other tables, other weights) is not reused."""
    from recsys.training.run import train_experiment

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    first = _cfg(small_data, tmp_path, "tracking.enabled=false", "training.epochs=1", "data.max_train_rows=2048")
    train_experiment(first, run)
    before = plain_state_dict_of(run / "initial.safetensors")
    other = _cfg(
        small_data,
        tmp_path,
        "tracking.enabled=false",
        "training.epochs=1",
        "data.max_train_rows=2048",
        "embedding.method=hash",
        "embedding.compression=4",
    )
    metrics = train_experiment(other, run)
    after = plain_state_dict_of(run / "initial.safetensors")
    assert metrics["compression_ratio"] >= 4
    assert {k: v.shape for k, v in before.items()} != {k: v.shape for k, v in after.items()}
    assert json.loads((run / "metrics.json").read_text())["embedding_bytes"] == metrics["embedding_bytes"]


def plain_state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_tracked_run_logs_its_checkpoint_and_exports_by_run_id(small_data, tmp_path, monkeypatch):
    import mlflow

    from recsys.cli import main
    from recsys.export import read_manifest
    from recsys.training.run import train_experiment

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _cfg(small_data, tmp_path, "training.epochs=1", "data.max_train_rows=2048", "tracking.system_metrics=false")
    train_experiment(cfg, tmp_path / "run")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "phases/train")}
    assert {"phases/train/weights.safetensors", "phases/train/state.safetensors"} <= logged
    out = tmp_path / "artifact"
    assert main(["export", "--run", run.info.run_id, "--tracking-uri", uri, "--out", str(out), "--data", str(small_data)]) == 0
    assert read_manifest(out).metrics["test_auc"] == pytest.approx(json.loads((tmp_path / "run" / "metrics.json").read_text())["test_auc"])


def test_tables_too_narrow_to_shard_are_named_before_training(small_data, tmp_path):
    from recsys.training.run import train_experiment

    cfg = _cfg(
        small_data, tmp_path, "embedding.method=unified", "embedding.compression=4", 'embedding.options={"chunk_dim": 2}', "tracking.enabled=false"
    )
    with pytest.raises(ValueError, match=r"multiple of 4; not 'unified_0' \(2\).*embedding.options.chunk_dim"):
        train_experiment(cfg, tmp_path / "run")


@pytest.mark.parametrize(("optimizer", "eps"), [("rowwise_adagrad", 1e-2), ("rowwise_adagrad", 1e-8), ("adagrad", 1e-3)])
def test_sparse_eps_reaches_the_fused_adagrad_step(small_data, tmp_path, optimizer, eps):
    """One step on one row with gradient g per column moves it by lr·g/(|g| + eps): a small gradient
    against eps moves the row little, against fbgemm's default 1e-8 a whole lr step."""
    import torch.distributed as dist
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recsys.embeddings import MethodContext, build_method
    from recsys.features import load_dataset_spec
    from recsys.training.distributed import ensure_process_group, shard
    from tests.unit.test_dsl import Holder

    spec = load_dataset_spec(small_data)
    cfg = _cfg(small_data, tmp_path, f"training.sparse_optimizer={optimizer}", f"training.sparse_eps={eps}").training
    started = ensure_process_group()
    try:
        torch.manual_seed(0)
        method = build_method("full", MethodContext.from_spec(spec, 4))
        dmp = shard(Holder(method), method, cfg).module
        names = [f.name for f in spec.sparse_fields]
        row, g = 3, 1e-4
        features = KeyedJaggedTensor.from_lengths_sync(names, torch.tensor([row]), torch.tensor([1] + [0] * (len(names) - 1)))
        first = f"method.ebc.embedding_bags.{names[0]}.weight"
        before = plain_state_dict(dmp)[first][row].clone()
        (dmp(features).sum() * g).backward()
        moved = plain_state_dict(dmp)[first][row] - before
        assert torch.allclose(moved, torch.full_like(moved, -cfg.sparse_lr * g / (g + eps)), rtol=1e-3)
    finally:
        if started:
            dist.destroy_process_group()
