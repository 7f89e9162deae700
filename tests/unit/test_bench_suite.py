"""``recsys bench quality`` over a suite: bootstrap intervals, suite YAML errors, a 2-dataset suite's summary and runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsys.cli import main
from recsys.config import ConfigError
from recsys.data.synthetic import generate
from recsys.metrics import auc
from recsys.training.bench.bootstrap import bootstrap_aucs, interval, resample_counts, weighted_auc
from recsys.training.bench.suite import load_suite


def test_weighted_auc_is_auc_of_the_resampled_rows() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.3).astype(np.float32)
    s = np.round(rng.random(400) + 0.4 * y, 1)  # many ties
    assert weighted_auc(y, s, np.ones((1, 400), np.float32))[0] == pytest.approx(auc(y, s), abs=1e-6)
    counts = next(resample_counts(400, 5, seed=1))
    assert counts.shape == (5, 400) and (counts.sum(axis=1) == 400).all()
    for row, value in zip(counts, weighted_auc(y, s, counts)):
        idx = np.repeat(np.arange(400), row.astype(int))
        assert value == pytest.approx(auc(y[idx], s[idx]), abs=1e-6)
    first = bootstrap_aucs(y, {"a": s}, resamples=200, seed=7)["a"]
    assert len(first) == 200 and np.array_equal(first, bootstrap_aucs(y, {"a": s}, resamples=200, seed=7)["a"])
    lo, hi = interval(first)
    assert lo < auc(y, s) < hi and hi - lo < 0.2


def _write(tmp: Path, raw: object) -> Path:
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("suite")
    a, b = root / "a", root / "b"
    generate(a, rows=3000, profile="small", seed=5, progress=False)
    generate(b, rows=3000, profile="small", seed=6, progress=False)
    return a, b


def test_bad_suite_yaml_names_the_file_and_key(two: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = two
    cases = [
        ({"datasets": [{"label": "a", "path": str(a)}], "methds": ["hash"]}, "methds: Extra inputs are not permitted"),
        ({"datasets": [{"label": "a", "path": str(a)}, {"label": "b", "path": str(tmp_path)}]}, "datasets.1.path: no dataset.json in"),
        ({"datasets": [{"label": "a", "path": str(a)}], "methods": ["hash", "hsah"]}, "methods: unknown benchmark method 'hsah'"),
        ({"datasets": [{"label": "a", "path": str(a)}, {"label": "a", "path": str(a)}]}, "labels must be unique; repeated: a"),
        ({"datasets": [{"label": "a", "path": str(a)}], "budgets": [10, 0.5]}, "budgets: Value error"),
        ({"datasets": [{"label": "a b", "path": str(a)}]}, "datasets.0.label: label 'a b' must be"),
        ({"datasets": [{"label": "a", "path": str(a), "sets": ["training.epochs"]}]}, "datasets.0.sets: 'training.epochs' is not KEY=VALUE"),
        ({"datasets": []}, "datasets: List should have at least 1 item"),
        ({"datasets": [{"label": "a", "path": str(a)}], "tune": {"trials": 0}}, "tune.trials: Input should be greater than or equal to 1"),
        ({"datasets": [{"label": "a", "path": str(a)}], "tune": {"trials": 4, "method": ["qr"]}}, "tune.method: Extra inputs are not permitted"),
        (
            {"datasets": [{"label": "a", "path": str(a)}], "tune": {"trials": 4, "methods": ["qr", "rq"]}},
            "tune.methods: unknown benchmark method 'rq'",
        ),
        ({"datasets": [{"label": "a", "path": str(a)}], "tune": {"trials": 4, "methods": []}}, "tune.methods: an empty list searches nothing"),
        ({"datasets": [{"label": "a", "path": str(a)}], "tune": {"trials": 4, "budgets": [1]}}, "tune.budgets: budget 1 must be a compression ratio"),
        ({"datasets": [{"label": "a", "path": str(a)}], "tune": {"methods": ["qr"]}}, "tune.trials: Field required"),
        (["a"], "(root): a suite is a mapping"),
    ]
    for raw, message in cases:
        path = _write(tmp_path, raw)
        with pytest.raises(ConfigError) as err:
            load_suite(path)
        assert str(err.value).startswith(f"{path}: "), err.value
        if message == "budgets: Value error":  # pydantic's float check or ours: either way the key is named
            assert "budgets" in str(err.value) and "0.5" in str(err.value)
        else:
            assert message in str(err.value), err.value
    assert main(["bench", "quality", "--suite", str(tmp_path / "missing.yaml")]) == 2


def test_two_dataset_suite_summary_agrees_with_the_points(two: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    a, b = two
    suite = _write(
        tmp_path,
        {
            "datasets": [{"label": "alpha", "path": str(a)}, {"label": "beta", "path": str(b), "sets": ["training.dense_lr=0.002"], "budgets": [8]}],
            "methods": ["full", "hash"],
            "budgets": [4],
            "model": "dlrm",
            "sets": ["training.batch_size=512"],
            "bootstrap": {"resamples": 300, "seed": 1},
        },
    )
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["bench", "quality", "--suite", str(suite), "--quick", "--out", str(out), "--tracking-uri", uri, "--experiment", "suite-test"]) == 0

    with open(out / "summary.csv", newline="") as fh:
        summary = {(r["dataset"], r["method"]): r for r in csv.DictReader(fh)}
    assert set(summary) == {(d, m) for d in ("alpha", "beta") for m in ("full", "hash")}
    for label in ("alpha", "beta"):
        budget = 4 if label == "alpha" else 8  # beta names its own budgets
        metrics = {
            m: json.loads((out / label / "points" / name / "metrics.json").read_text())
            for m, name in (("full", "full_seed0"), ("hash", f"hash_{budget}x_seed0"))
        }
        full, hashed = summary[(label, "full")], summary[(label, "hash")]
        assert float(hashed["budget"]) == budget
        assert float(full["auc_mean"]) == pytest.approx(metrics["full"]["test_auc"])
        assert float(hashed["auc_mean"]) == pytest.approx(metrics["hash"]["test_auc"])
        assert float(hashed["d_full"]) == pytest.approx(metrics["hash"]["test_auc"] - metrics["full"]["test_auc"])
        assert hashed["baseline"] == "hash" and float(hashed["d_base"]) == 0.0 and hashed["best"] == "True"
        assert int(hashed["bytes"]) == metrics["hash"]["embedding_bytes"] and int(full["test_rows"]) == metrics["full"]["test_rows"]
        for r, point in ((full, metrics["full"]["test_auc"]), (hashed, metrics["hash"]["test_auc"])):
            assert float(r["auc_lo"]) < point < float(r["auc_hi"])  # the interval contains the point estimate
        assert float(hashed["d_full_lo"]) < float(hashed["d_full"]) < float(hashed["d_full_hi"])
        assert math.isnan(float(full["d_full"]))
    beta_cfg = yaml.safe_load((out / "beta" / "points" / "hash_8x_seed0" / "config.yaml").read_text())
    alpha_cfg = yaml.safe_load((out / "alpha" / "points" / "hash_4x_seed0" / "config.yaml").read_text())
    assert beta_cfg["training"]["dense_lr"] == 0.002 and alpha_cfg["training"]["dense_lr"] != 0.002  # a dataset's own sets
    assert alpha_cfg["training"]["batch_size"] == 512 == beta_cfg["training"]["batch_size"]

    tally = json.loads((out / "summary.json").read_text())["wins_losses"]
    assert tally == [
        {
            "budget": b,
            "method": "hash",
            "wins": 0,
            "losses": 0,
            "sure_wins": 0,
            "sure_losses": 0,
            "failed": 0,
            "d_full": pytest.approx(float(summary[(d, "hash")]["d_full"])),
            "datasets": 1,
        }
        for b, d in ((4.0, "alpha"), (8.0, "beta"))
    ]
    md = (out / "summary.md").read_text()
    assert "### 4×: test AUC Δ against `full`" in md and "### 8×: test AUC Δ against `full`" in md and "#### alpha" in md and "#### beta" in md
    four = md.split("### 4×")[1].split("### 8×")[0]
    assert "| alpha |" in four and "| beta |" not in four  # a dataset appears under its own budgets only
    assert (out / "pareto.png").stat().st_size > 10_000

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("suite-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["bench"] == "quality-suite" and parents[0].info.status == "FINISHED"
    datasets = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["dataset"] for r in datasets) == sorted([str(a), str(b)])
    for run in datasets:
        points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert sorted(r.info.run_name for r in points) in (["full_seed0", "hash_4x_seed0"], ["full_seed0", "hash_8x_seed0"])
    assert {"summary.csv", "summary.md", "summary.json", "pareto.png"} <= {f.path for f in client.list_artifacts(parents[0].info.run_id)}

    # --report-only: a method never trained is left out, finished points are read back, nothing is trained.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/points/*/metrics.json")}
    assert (
        main(
            [
                "bench",
                "quality",
                "--suite",
                str(suite),
                "--quick",
                "--out",
                str(out),
                "--tracking-uri",
                uri,
                "--experiment",
                "suite-test",
                "--methods",
                "full,hash,qr",
                "--report-only",
            ]
        )
        == 0
    )
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/points/*/metrics.json")} == stamps
    assert not list(out.glob("*/points/qr_*"))
    with open(out / "summary.csv", newline="") as fh:
        again = {(r["dataset"], r["method"]): r["auc_mean"] for r in csv.DictReader(fh)}
    assert again == {k: r["auc_mean"] for k, r in summary.items()}
