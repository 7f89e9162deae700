"""A trained ``hybrid`` run exports (fp32, int8) and serves: the lookup layer scores like the eval model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.config import load_config
from recsys.data.synthetic import generate
from recsys.export import export_run, load_artifact
from recsys.export.exporter import load_run
from recsys.metrics import auc
from recsys.serving.store import Store
from tests.serving_support import ROOT, test_batches


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    from recsys.training.run import train_experiment

    base = tmp_path_factory.mktemp("hybrid")
    data = base / "data"
    generate(data, rows=6000, profile="small_real", seed=2, progress=False)
    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        [
            f"data.path={data}",
            "tracking.enabled=false",
            "training.epochs=1",
            "training.batch_size=256",
            "training.max_steps_per_epoch=12",
            "training.progress=false",
            "embedding.method=hybrid",
            "embedding.compression=10",
        ],
    )
    with pytest.MonkeyPatch.context() as patch:  # every hot value counts as rare: the hot rows trained at 0.5
        patch.setattr("recsys.embeddings.hybrid.RARE", 1.0)
        train_experiment(cfg, base / "run")
        yield data, base / "run"  # load_run rebuilds the method from the same counts: the patch must hold


def test_hybrid_exports_and_serves(hybrid_run, tmp_path):
    data, run = hybrid_run
    diagnostics = json.loads((run / "diagnostics.json").read_text())
    assert diagnostics["tail_rows"] > 0 and set(diagnostics["hot_rows"]) == {f"C{i}" for i in range(1, 11)}
    assert diagnostics["hot_scale"] == 0.5
    _, _, method, model = load_run(run)
    assert method.hot_rows == diagnostics["hot_rows"], "export rebuilds the sizes from the same vocabulary counts"
    assert method.hot_scale == 0.5, "export rebuilds the factor from the same counts"
    batches = test_batches(data, "index")
    with torch.no_grad():
        expected = np.concatenate([torch.sigmoid(model(b.dense_features, b.sparse_features)).numpy() for b in batches])
    labels = np.concatenate([b.labels.numpy() for b in batches])
    scores = {}
    for dtype in ("fp32", "int8"):
        manifest = export_run(run, tmp_path / dtype, dtype=dtype)
        assert manifest.method.options["hot_rows"] == method.hot_rows and manifest.method.options["tail_rows"] == method.tail_rows
        assert manifest.method.options["hot_scale"] == 0.5
        store = Store(load_artifact(tmp_path / dtype))
        scores[dtype] = np.concatenate([store.score_batch(b.dense_features, b.sparse_features) for b in batches])
    np.testing.assert_array_equal(scores["fp32"], expected.astype(np.float32))
    assert abs(auc(labels, scores["int8"]) - auc(labels, scores["fp32"])) < 2e-3
    assert not np.array_equal(scores["int8"], scores["fp32"])
    sizes = {d: (tmp_path / d / "embedding.safetensors").stat().st_size for d in scores}
    assert sizes["int8"] < sizes["fp32"] / 2
