"""``recsys bench quality --folds K``: the sweep on each fold, and a summary whose Δs are the folds' paired held-out differences."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from recsys.cli import main
from recsys.data.synthetic import generate
from recsys.features import load_dataset_spec
from recsys.metrics import auc
from recsys.storage import load_tensors


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crossval") / "small"
    generate(out, rows=3000, profile="small", seed=5, progress=False)
    return out


def _scores(out: Path, fold: int, point: str) -> tuple[np.ndarray, np.ndarray]:
    t = load_tensors(out / f"fold{fold}" / "points" / point / "valid_scores.safetensors")
    return t["labels"].numpy(), t["probs"].numpy()


def test_crossval_summary_is_the_mean_paired_heldout_difference(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["bench", "quality", "--dataset", str(small), "--methods", "full,hash,qr,unified", "--budgets", "4", "--quick"]
    assert main([*args, "--folds", "3", "--model", "dlrm", "--out", str(out), "--tracking-uri", uri, "--experiment", "xv"]) == 0
    assert "3-fold cross-validation" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "crossval.json").read_text())}
    assert set(rows) == {"full", "hash", "qr", "unified"}
    spec = load_dataset_spec(small)
    held = [load_dataset_spec(out / "folds" / f"fold{i}").splits["valid"].rows for i in range(3)]
    assert sum(held) == spec.splits["train"].rows + spec.splits["valid"].rows, "every train and valid row is held out once"
    for i in range(3):  # each fold's points are scored on all of its held-out rows
        assert len(_scores(out, i, "full_seed0")[0]) == held[i]
    for method in ("hash", "unified"):
        r = rows[method]
        each = [auc(*_scores(out, i, f"{method}_4x_seed0")) - auc(*_scores(out, i, "full_seed0")) for i in range(3)]
        assert r["delta_vs_full"] == pytest.approx(np.mean(each), abs=1e-6) and r["runs"] == 3
        assert r["lo_vs_full"] < r["delta_vs_full"] < r["hi_vs_full"] and r["se_vs_full"] > 0
        mean = np.mean([json.loads((out / f"fold{i}" / "points" / f"{method}_4x_seed0" / "metrics.json").read_text())["valid_auc"] for i in range(3)])
        assert r["heldout_auc"] == pytest.approx(mean)
    assert "delta_vs_full" not in rows["full"] and "best_baseline" not in rows["qr"], "no Δ of full against itself; a baseline has no baseline"
    base = max(("hash", "qr"), key=lambda m: rows[m]["heldout_auc"])
    assert rows["unified"]["best_baseline"] == base
    each = [auc(*_scores(out, i, "unified_4x_seed0")) - auc(*_scores(out, i, f"{base}_4x_seed0")) for i in range(3)]
    assert rows["unified"]["delta_vs_baseline"] == pytest.approx(np.mean(each), abs=1e-6)
    assert (out / "crossval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| unified | 4× |" in (out / "crossval.md").read_text()

    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "xv"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("bench") == "quality-crossval"]
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(folds) == 3 and parent.data.params["folds"] == "3"
    assert parent.data.metrics["delta_vs_full/unified_4x"] == pytest.approx(rows["unified"]["delta_vs_full"])
    assert "crossval.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    stamp = (out / "fold0" / "points" / "hash_4x_seed0" / "metrics.json").stat().st_mtime_ns
    assert main([*args, "--folds", "3", "--model", "dlrm", "--out", str(out), "--tracking-uri", uri, "--experiment", "xv"]) == 0
    assert (out / "fold0" / "points" / "hash_4x_seed0" / "metrics.json").stat().st_mtime_ns == stamp, "a rerun reads the points back"


def test_folds_need_one_dataset_and_two_folds(small: Path, tmp_path: Path) -> None:
    base = ["bench", "quality", "--quick", "--methods", "full", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="--folds 1: cross-validation takes one --dataset and at least 2 folds"):
        main([*base, "--dataset", str(small), "--folds", "1"])
    (tmp_path / "other").symlink_to(small)
    with pytest.raises(SystemExit, match="takes one --dataset"):
        main([*base, "--dataset", str(small), "--dataset", str(tmp_path / "other"), "--folds", "3"])
