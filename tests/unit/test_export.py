"""Export artifact and in-process lookup layer: exactness, quantization, checksums, unseen values, pyfunc."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.embeddings import available_methods, get_method
from recsys.embeddings.base import ExportedMethod
from recsys.export import ArtifactError, export_run, load_artifact
from recsys.export.tables import tables_uninitialised
from recsys.features import id_column
from recsys.hashing import bucket_np, hash64_str, salt_for
from recsys.metrics import auc
from recsys.serving.store import Store
from tests.serving_support import ensure_runs, raw_strings, reference_model, reference_probs, test_batches
from tests.unit.test_method_contract import contract_ctx, make, random_kjt


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    return ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")


@pytest.fixture(scope="module")
def artifacts(runs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    _, run = runs
    out = tmp_path_factory.mktemp("artifacts")
    wanted = [("full", "fp32"), ("hash", "fp32"), ("hash", "int8"), ("hash", "fp16"), ("hash", "int4")]
    for method, dtype in wanted:
        export_run(run[method], out / f"{method}-{dtype}", dtype=dtype)
    return {w: out / f"{w[0]}-{w[1]}" for w in wanted}


@pytest.mark.parametrize("method", ["full", "hash"])
def test_fp32_artifact_reproduces_eval_outputs_exactly(runs, artifacts, method):
    data, run = runs
    store = Store(load_artifact(artifacts[method, "fp32"]))
    batches = test_batches(data, store.manifest.method.id_scheme)
    expected = reference_probs(reference_model(run[method]), batches)
    got = np.concatenate([store.score_batch(b.dense_features, b.sparse_features) for b in batches])
    assert got.dtype == np.float32 and len(got) == sum(len(b) for b in batches)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("method", ["full", "hash"])
def test_raw_values_encode_like_the_data(runs, artifacts, method):
    """Requests of raw strings give the dataset's ids (vocab indices / raw ids) and the same scores."""
    import pyarrow.parquet as pq

    data, run = runs
    store = Store(load_artifact(artifacts[method, "fp32"]))
    strings = raw_strings(data)
    table = pq.read_table(next((data / "test").glob("*.parquet"))).slice(0, 300)
    requests = []
    for r in range(table.num_rows):
        sparse = {f: strings[f][table.column(id_column(f))[r].as_py()] for f in store.features}
        dense = {f: float(np.expm1(table.column(f)[r].as_py())) for f in store.dense_features}
        requests.append({"dense": dense, "sparse": sparse})
    kjt = store.encoder.kjt([r["sparse"] for r in requests])
    column = (lambda f: f) if store.manifest.method.id_scheme == "index" else id_column
    expected_ids = np.concatenate([table.column(column(f)).to_numpy() for f in store.features])
    np.testing.assert_array_equal(kjt.values().numpy(), expected_ids)
    batch = test_batches(data, store.manifest.method.id_scheme, batch_size=300)[0]
    np.testing.assert_allclose(store.score(requests), reference_probs(reference_model(run[method]), [batch]), rtol=0, atol=2e-5)


def test_quantized_artifacts_keep_auc_and_shrink(runs, artifacts):
    data, _ = runs
    batches = test_batches(data, "raw", batch_size=4096)
    labels = np.concatenate([b.labels.numpy() for b in batches])
    scores = {}
    for dtype in ("fp32", "fp16", "int8", "int4"):
        store = Store(load_artifact(artifacts["hash", dtype]))
        scores[dtype] = np.concatenate([store.score_batch(b.dense_features, b.sparse_features) for b in batches])
    base = auc(labels, scores["fp32"])
    assert abs(auc(labels, scores["fp16"]) - base) <= 2e-4
    assert abs(auc(labels, scores["int8"]) - base) <= 2e-3
    assert abs(auc(labels, scores["int4"]) - base) <= 2e-2
    sizes = {d: (artifacts["hash", d] / "embedding.safetensors").stat().st_size for d in ("fp32", "fp16", "int8", "int4")}
    assert sizes["fp32"] > sizes["fp16"] > sizes["int8"] > sizes["int4"]
    manifest = json.loads((artifacts["hash", "int8"] / "manifest.json").read_text())
    assert manifest["dtype"] == "int8" and all(t["dtype"] == "int8" for t in manifest["tables"].values())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_artifacts_are_refused(artifacts, tmp_path):
    src = artifacts["full", "fp32"]
    flipped = _copy(src, tmp_path / "flipped")
    raw = bytearray((flipped / "embedding.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (flipped / "embedding.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum mismatch for embedding.safetensors"):
        load_artifact(flipped)
    edited = _copy(src, tmp_path / "edited")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["method"]["options"] = {"rows": 7}
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest checksum mismatch"):
        load_artifact(edited)
    missing = _copy(src, tmp_path / "missing")
    next((missing / "vocab").glob("*.arrow")).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Store.open(missing)
    with pytest.raises(ArtifactError, match="not an export artifact"):
        load_artifact(tmp_path)


def test_unseen_values_follow_the_method(artifacts):
    full = Store(load_artifact(artifacts["full", "fp32"]))
    table = full.embedding.ebc.embedding_bags["C5"].weight.detach().numpy()
    got = full.embeddings([("C5", "never-seen-value"), ("C5", None), ("C5", ""), ("C5", "C5_0")])
    np.testing.assert_array_equal(got[0], table[1])  # OOV row
    np.testing.assert_array_equal(got[1], table[0])  # missing row
    np.testing.assert_array_equal(got[2], table[0])
    assert not np.array_equal(got[3], table[1])
    hashed = Store(load_artifact(artifacts["hash", "fp32"]))
    rows = hashed.embedding.rows["C5"]
    weight = hashed.embedding.ebc.embedding_bags["C5"].weight.detach().numpy()
    value = "never-seen-value"
    row = int(bucket_np(np.array([hash64_str(value)]), salt_for("C5"), rows)[0])
    np.testing.assert_array_equal(hashed.embeddings([("C5", value)])[0], weight[row])
    entity = hashed.entity({"C5": value, "C1": 7})
    np.testing.assert_array_equal(entity["C5"], weight[row])
    assert set(entity) == {"C5", "C1"}


@pytest.mark.parametrize("name", available_methods())
def test_every_method_exports_its_eval_forward(name):
    """Contract: ``from_export(export())`` (tables uninitialised first) equals the eval forward."""
    method = make(name).eval()
    kjt = random_kjt(name, 64, seed=1)
    with torch.no_grad():
        expected = method(kjt).values()
    exported = method.export()
    state = {k: v.clone() for k, v in exported.state.items()}
    with tables_uninitialised():
        served = get_method(exported.name).from_export(
            contract_ctx(name), ExportedMethod(exported.name, json.loads(json.dumps(exported.options)), state)
        )
    with torch.no_grad():
        torch.testing.assert_close(served(kjt).values(), expected, rtol=0, atol=0)


def test_cli_export_and_quantized_refusal(runs, tmp_path):
    from recsys.cli import main

    _, run = runs
    assert main(["export", "--run", str(run["full"]), "--out", str(tmp_path / "a"), "--dtype", "int8"]) == 0
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"manifest.json", "embedding.safetensors", "dense.safetensors", "vocab"}
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "b")]) == 2


def test_pyfunc_and_registry_source_with_alias_moves(artifacts, tmp_path, monkeypatch):
    """A logged pyfunc loads from a sqlite registry; ``models:/NAME@ALIAS`` is served and followed when the alias moves."""
    import mlflow

    from recsys.serving.pyfunc import log_model
    from recsys.serving.reload import ModelHolder
    from recsys.serving.source import make_source

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        log_model(artifacts["hash", "int8"], "model", registered_model_name="ctr")
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("ctr", "champion", "1")
        model = mlflow.pyfunc.load_model("models:/ctr@champion")
        holder = ModelHolder(make_source("models:/ctr@champion", tmp_path / "cache", uri), poll_interval_s=0)
        store = holder.load_initial()
        log_model(artifacts["full", "fp32"], "model", registered_model_name="ctr")
        client.set_registered_model_alias("ctr", "champion", "2")
        assert holder.poll_once() and not holder.poll_once()
    finally:
        mlflow.set_tracking_uri(None)
    frame = pd.DataFrame([{"I1": 3.0, "C1": "C1_0", "C5": "C5_2"}, {"I1": None, "C1": "unseen", "C5": None}])
    expected = store.score([{"dense": {"I1": 3.0}, "sparse": {"C1": "C1_0", "C5": "C5_2"}}, {"sparse": {"C1": "unseen"}}])
    np.testing.assert_array_equal(model.predict(frame), expected)
    assert store.version == "ctr/1" and holder.store.version == "ctr/2" and holder.store.manifest.method.name == "full"
    assert not (tmp_path / "cache" / "ctr-v1").exists()  # the old version's download is released
