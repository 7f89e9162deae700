"""``recsys bench quality``: a quick sweep on a tiny dataset, its tables, plot, MLflow runs and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from recsys.assembly import Assembly
from recsys.data.synthetic import generate
from recsys.training.bench.methods import SWEEP_METHODS
from recsys.training.bench.quality import Point, Sweep, SweepSettings, run_sweep
from recsys.training.bench.report import PointResult, markdown, pareto_front, read_csv, summarise


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    generate(out, rows=3000, profile="small", seed=5, progress=False)
    return out


def _settings(tiny: Path, tmp: Path, **kw) -> SweepSettings:
    defaults = dict(
        dataset=tiny,
        methods=["full", "hash", "dsl"],
        budgets=[20.0],
        quick=True,
        out=tmp / "sweep",
        tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        experiment="bench-test",
        progress=False,
        sets=["training.batch_size=512"],
    )
    return SweepSettings(**(defaults | kw))


def test_every_method_gets_a_valid_config_and_budget(tiny: Path, tmp_path: Path) -> None:
    sweep = Sweep(_settings(tiny, tmp_path, methods=list(SWEEP_METHODS), budgets=[4.0]))
    for method, entry in SWEEP_METHODS.items():
        point = Point(method, None if entry.budget is None else 4.0, 0)
        cfg = sweep.config(point)
        assert cfg.tracking.enabled is False and cfg.data.path == str(tiny)
        e = cfg.embedding
        built = Assembly.of(cfg, sweep.spec).method()  # buildable; budgeted ones fit (check_budget)
        if method == "full":
            assert built.memory_bytes() == sweep.full_bytes
        elif e.compression is not None:
            assert built.memory_bytes() <= sweep.full_bytes // 4


def test_method_scoped_sets_reach_only_that_methods_points(tiny: Path, tmp_path: Path) -> None:
    sets = ["training.batch_size=512", "unified:embedding.options.chunk_dim=2", "unified+dsl:training.epochs=3"]
    sweep = Sweep(_settings(tiny, tmp_path, methods=["full", "unified", "unified+dsl"], sets=sets))
    unified, full = sweep.config(Point("unified", 20.0, 0)), sweep.config(Point("full", None, 0))
    assert unified.embedding.options["chunk_dim"] == 2 and unified.training.batch_size == 512
    assert full.embedding.options == {} and full.training.batch_size == 512 and full.training.epochs == 1
    assert sweep.config(Point("unified+dsl", 20.0, 0)).training.epochs == 3
    with pytest.raises(KeyError, match="unknown benchmark method 'unifed'"):
        Sweep(_settings(tiny, tmp_path, sets=["unifed:embedding.options.chunk_dim=2"]))


def test_quick_sweep_tables_plot_mlflow_and_resume(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow artifacts land under the test's folder
    settings = _settings(tiny, tmp_path)
    rows = run_sweep(settings)
    out = settings.out
    table = {(r["method"], float(r["budget"])): r for r in read_csv(out / "results.csv")}
    assert set(table) == {("full", 1.0), ("hash", 20.0), ("dsl", 20.0)}  # full once, uncompressed
    assert len(rows) == 3
    for key, r in table.items():
        if key == ("dsl", 20.0):  # on full, CSR row offsets alone are 1/16 of full: DSL cannot meet 20x
            assert r["status"] == "failed" and "cannot fit the budget" in r["error"]
            continue
        assert r["status"] == "ok", r
        assert 0 < float(r["auc_mean"]) < 1 and float(r["logloss_mean"]) > 0
        assert not math.isnan(float(r["oracle_gap"]))
        if r["budget_bytes"]:
            assert int(r["bytes"]) <= int(r["budget_bytes"])
    md = (out / "results.md").read_text()
    assert "| hash | 20×" in md and "| full | 1× (uncompressed)" in md and "failed: ValueError: method 'dsl' cannot fit the budget" in md
    assert (out / "pareto.png").stat().st_size > 10_000

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name("bench-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["dsl_20x_seed0", "full_seed0", "hash_20x_seed0"]
    by_name = {r.info.run_name: r for r in children}
    assert by_name["dsl_20x_seed0"].info.status == "FAILED" and "cannot fit" in by_name["dsl_20x_seed0"].data.tags["error"]
    assert 0 < by_name["hash_20x_seed0"].data.metrics["test_auc"] < 1
    assert by_name["hash_20x_seed0"].data.params["embedding.method"] == "hash"
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.csv", "results.md", "pareto.png"} <= artifacts

    # Resume: finished points are read back, not retrained; the failed one is tried again.
    finished = sorted(out.glob("points/*/metrics.json"))
    assert len(finished) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    again = run_sweep(settings)
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    assert [r["auc_mean"] for r in again if r["seeds_ok"]] == [r["auc_mean"] for r in rows if r["seeds_ok"]]
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.resumed = 'true'")
    assert len(runs) == 2


def test_changed_config_retrains_and_rerun(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = _settings(tiny, tmp_path, methods=["hash"])
    run_sweep(settings)
    metrics = settings.out / "points/hash_20x_seed0/metrics.json"
    first = metrics.stat().st_mtime_ns
    run_sweep(_settings(tiny, tmp_path, methods=["hash"], rerun=True))
    second = metrics.stat().st_mtime_ns
    assert second > first
    run_sweep(_settings(tiny, tmp_path, methods=["hash"], sets=["training.batch_size=256"]))
    assert metrics.stat().st_mtime_ns > second  # another config: retrained


def test_pareto_front_and_summary() -> None:
    assert pareto_front([(10, 0.7), (100, 0.69), (100, 0.72), (1000, 0.75), (5, 0.6)]) == [(5, 0.6), (10, 0.7), (100, 0.72), (1000, 0.75)]
    ok = {"test_auc": 0.7, "test_logloss": 0.45, "embedding_bytes": 100, "full_embedding_bytes": 1000, "train_samples_per_s": 5.0}
    rows = summarise([PointResult("hash", 10.0, 0, 100, metrics=ok), PointResult("hash", 10.0, 1, 100, error="boom | x")])
    assert rows[0]["status"] == "partial" and rows[0]["seeds_ok"] == 1 and rows[0]["compression"] == 10.0
    assert "partial: boom \\| x" in markdown(rows)


def test_compositions_are_typed_method_values() -> None:
    from recsys.embeddings import MethodSpec, WrappedMethod, get_method

    for name, entry in SWEEP_METHODS.items():
        assert isinstance(entry.embedding, MethodSpec)
        if "+" in name:  # BASE+WRAPPER: the wrapper with a typed base
            base, wrapper = name.split("+")
            assert entry.embedding.method == wrapper and issubclass(get_method(wrapper), WrappedMethod)
            assert entry.embedding.options.base.method == base
            quick = entry.spec(quick=True)
            assert quick.options.base == entry.embedding.options.base
            assert all(getattr(quick.options, k) == v for k, v in entry.quick.items())
    assert SWEEP_METHODS["unified+dsl"].embedding.id_scheme == "raw" and SWEEP_METHODS["dsl"].embedding.id_scheme == "index"
