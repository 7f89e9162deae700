"""A suite with a ``tune`` key on a real local Ray: the ``tuned`` column is a retrain of each search's
``best.yaml`` at the suite's seeds, chosen by validation AUC, and a rerun reads everything back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from recsys.cli import main
from recsys.data.synthetic import generate


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("suite-tune")
    a, b = root / "a", root / "b"
    generate(a, rows=3000, profile="small", seed=5, progress=False)
    generate(b, rows=3000, profile="small", seed=6, progress=False)
    return a, b


def test_tuned_column_is_a_retrain_of_the_written_best_yaml(two, ray_cluster, tmp_path: Path, capsys) -> None:
    a, b = two
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "datasets": [{"label": "a", "path": str(a)}, {"label": "b", "path": str(b), "sets": ["training.dense_lr=0.002"]}],
                "methods": ["full", "hash"],
                "budgets": [4],
                "seeds": 2,
                "model": "deepfm",
                "sets": ["training.batch_size=256", "training.epochs=2", "training.patience=3", "data.max_eval_rows=2000"],
                "bootstrap": {"resamples": 100, "seed": 0},
                "tune": {"trials": 3, "methods": ["hash", "qr"]},
            }
        )
    )
    out, db = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["bench", "quality", "--suite", str(suite), "--out", str(out), "--tracking-uri", db]
    assert main(args) == 0
    summary = {(r["dataset"], r["method"]): r for r in csv.DictReader((out / "summary.csv").open())}
    for label in ("a", "b"):
        search = out / label / "tune" / "4x"
        trials = [r for r in csv.DictReader((search / "trials.csv").open()) if r["status"] == "ok"]
        best = json.loads((search / "best.json").read_text())
        assert best["valid_auc"] == pytest.approx(max(float(r["valid_auc"]) for r in trials), abs=1e-6), "picked by validation AUC"
        picked = next(r for r in trials if r["trial"] == best["trial"])
        cfg = yaml.safe_load((search / "best.yaml").read_text())
        assert cfg["embedding"]["method"] == best["method"] == picked["method"]
        assert cfg["training"]["epochs"] == 2 and cfg["training"]["batch_size"] == 256, "the suite's sets reach the search"
        assert cfg["training"]["dense_lr"] == (0.002 if label == "b" else 0.001), "and the dataset's own sets"
        points = [json.loads((out / label / "points" / f"tuned_4x_seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        row = summary[(label, "tuned")]
        assert float(row["auc_mean"]) == pytest.approx((points[0]["test_auc"] + points[1]["test_auc"]) / 2, abs=1e-9)
        assert row["pick"].startswith(best["method"]) and row["seeds_ok"] == "2"
        assert float(row["d_full"]) == pytest.approx(float(row["auc_mean"]) - float(summary[(label, "full")]["auc_mean"]), abs=1e-9)
        assert row["d_base_lo"] != "nan" and float(row["d_base_lo"]) <= float(row["d_base"]) <= float(row["d_base_hi"])

    run = tmp_path / "retrain"
    best_yaml = out / "b" / "tune" / "4x" / "best.yaml"
    assert main(["train", "--config", str(best_yaml), "--set", "training.seed=1", "--out", str(run), "--tracking-uri", db]) == 0
    retrain = json.loads((run / "metrics.json").read_text())
    point = json.loads((out / "b" / "points" / "tuned_4x_seed1" / "metrics.json").read_text())
    assert retrain["test_auc"] == point["test_auc"] and retrain["embedding_bytes"] == point["embedding_bytes"]
    assert "The tuner's pick" in (out / "summary.md").read_text()
    wins = json.loads((out / "summary.json").read_text())["wins_losses"]
    assert any(t["method"] == "tuned" and t["datasets"] == 2 for t in wins)

    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("*/points/*/metrics.json"), *out.glob("*/tune/4x/tune.json")]}
    assert main(args) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "a rerun reads the searches and the points back"
    capsys.readouterr()
