"""``RunFolder``: the run-folder layout (phases, checkpoint, outputs), and ``Assembly``: config → context → method → model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.assembly import Assembly
from recsys.config import ExperimentConfig
from recsys.data.synthetic import generate
from recsys.runfolder import OUTPUTS, RAY_OUTPUTS, RunFolder


def _touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_phase_is_finished_once_it_has_its_summary_and_state(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    phase = run.phase("search")
    assert phase.root == tmp_path / "phases" / "search" and phase.name == "search"
    _touch(phase.weights)
    _touch(phase.summary, '{"phase": {"name": "search"}}')
    assert not phase.finished()
    _touch(phase.state)
    assert phase.finished() and phase.read_summary() == {"phase": {"name": "search"}}


def test_clear_removes_a_runs_outputs_and_keeps_everything_else(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    for name in (*OUTPUTS, *RAY_OUTPUTS):
        _touch(tmp_path / name / "f" if name in ("phases", "ray", "workers") else tmp_path / name)
    _touch(tmp_path / "point.json")
    _touch(tmp_path / "mlflow_spool.jsonl")
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mlflow_spool.jsonl", "point.json", *RAY_OUTPUTS])
    run.clear(RAY_OUTPUTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow_spool.jsonl", "point.json"]


def test_checkpoint_and_artifact_files_of_a_finished_run(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.write_metrics({"test_auc": 0.75})
    cfg = ExperimentConfig.model_validate({"data": {"path": "data/x"}, "embedding": {"method": "hash", "compression": 4}})
    run.write_config(cfg)
    for phase in ("supernet", "retrain"):
        for name in ("weights.safetensors", "state.safetensors", "summary.json", "learning_curve.png"):
            _touch(tmp_path / "phases" / phase / name)
    _touch(run.learning_curve)
    assert run.read_config() == cfg and run.read_metrics() == {"test_auc": 0.75}
    assert run.checkpoint_files() == [
        "config.yaml",
        "metrics.json",
        "phases/retrain/weights.safetensors",
        "phases/retrain/state.safetensors",
        "phases/supernet/weights.safetensors",
        "phases/supernet/state.safetensors",
    ]
    logged = [(str(p.relative_to(tmp_path)), folder) for p, folder in run.artifacts(checkpoint=False)]
    assert logged == [
        ("metrics.json", None),
        ("config.yaml", None),
        ("learning_curve.png", None),
        ("phases/retrain/learning_curve.png", "phases/retrain"),
        ("phases/supernet/learning_curve.png", "phases/supernet"),
        ("phases/retrain/summary.json", "phases/retrain"),
        ("phases/supernet/summary.json", "phases/supernet"),
    ]
    with_weights = [str(p.relative_to(tmp_path)) for p, _ in run.artifacts(checkpoint=True)]
    assert with_weights[len(logged) :] == [
        "phases/retrain/weights.safetensors",
        "phases/supernet/weights.safetensors",
        "phases/retrain/state.safetensors",
        "phases/supernet/state.safetensors",
    ]


def test_a_folder_without_config_is_not_a_run_folder(tmp_path: Path) -> None:
    assert RunFolder(tmp_path).read_metrics() is None
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no config.yaml; is this a finished run folder"):
        RunFolder(tmp_path).read_config()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("assembly") / "tiny"
    generate(out, rows=2000, profile="small", seed=3, progress=False)
    return out


def _cfg(data: Path, method: str, **embedding) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"data": {"path": str(data)}, "embedding": {"method": method, **embedding}})


def test_assembly_reads_value_counts_only_for_methods_sized_by_them(tiny: Path) -> None:
    hybrid = Assembly.of(_cfg(tiny, "hybrid", compression=4))
    counts = hybrid.ctx.value_counts
    assert counts is not None and set(counts) == {f.name for f in hybrid.spec.sparse_fields}
    assert all(np.all(np.diff(c) <= 0) for c in counts.values())  # vocabulary order: decreasing counts
    assert hybrid.method().memory_bytes() <= hybrid.ctx.full_bytes // 4
    assert Assembly.of(_cfg(tiny, "hash", compression=4)).ctx.value_counts is None


def test_assembly_builds_the_configured_method_in_a_phase_and_its_model(tiny: Path) -> None:
    parts = Assembly.of(_cfg(tiny, "optembed"))
    assert [p.name for p in parts.phases()] == ["supernet", "search", "retrain"]
    method = parts.method(parts.phases()[1])
    assert method.stage == "search" and not method.threshold.requires_grad
    model = parts.model(method)
    assert model.embedding is method and type(model).__name__ == {"dlrm": "DLRM", "dcnv2": "DCNv2", "deepfm": "DeepFM"}[parts.cfg.model.name]
