"""``recsys tune --quick`` on a tiny dataset, on a real local Ray: seeded trials, reports, a
``best.yaml`` that ``recsys train --config`` runs, resume, and an impossible budget's message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import yaml

from recsys.cli import main
from recsys.config import TrainingConfig
from recsys.data.synthetic import generate
from recsys.metrics import auc
from recsys.storage import load_tensors
from recsys.training.bench.quality import Point, Sweep, SweepSettings
from recsys.training.tune.folds import confirm_on_folds, fold_runs, fold_scores
from recsys.training.tune.report import TrialResult
from recsys.training.tune.search import TuneError, TuneSettings, feasible_methods


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tune-data") / "tiny"
    generate(out, rows=4000, profile="small_real", seed=0, progress=False)
    return out


def test_tune_quick_writes_a_best_config_that_trains(tiny, ray_cluster, tmp_path, capsys) -> None:
    out, db = tmp_path / "tune", f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "tune",
        "--dataset",
        str(tiny),
        "--budget",
        "10",
        "--methods",
        "hash,hybrid",
        "--trials",
        "3",
        "--quick",
        "--out",
        str(out),
        "--tracking-uri",
        db,
        "--set",
        "training.batch_size=256",
        "--set",
        "training.epochs=2",
        "--set",
        "training.patience=3",
        "--confirm-folds",
        "0",  # the validation split's seed confirmation first; the folds (the default on this small set) below
    ]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["method"] for r in rows] == ["hash", "hybrid", "hash"]
    assert {r["status"] for r in rows} <= {"ok", "stopped"}, "ASHA may stop a trailing trial after its first epoch"
    assert rows[0]["status"] == "ok", "a baseline's default trial is never stopped: the pick compares with it"
    done = [r for r in rows if r["status"] == "ok"]
    assert done and all(0 < int(r["embedding_bytes"]) and float(r["compression"]) >= 10 and r["epochs"] == "2" for r in done)
    assert all(float(r["valid_auc"]) > 0 for r in rows)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in done:  # the validation rows' scores the pick compares: valid_auc is measured on them
        scores = load_tensors(out / "trials" / r["trial"] / "valid_scores.safetensors")
        assert abs(auc(scores["labels"].numpy(), scores["probs"].numpy()) - float(r["valid_auc"])) < 1e-5
    top = max(done, key=lambda r: float(r["valid_auc"]))
    record = json.loads((out / "best.json").read_text())
    assert record["pick"]["best_by_valid_auc"] == top["trial"]
    best = next(r for r in done if r["trial"] == record["trial"])
    assert best is top or (best["method"] == "hash" and record["pick"]["lead"] <= 2 * record["pick"]["lead_se"]), record
    if top["method"] != "hash":  # the leaders were retrained at a fresh seed and compared over both
        assert record["pick"]["seeds"] == 2 and record["pick"]["baseline"].endswith(tuple(r["trial"] for r in rows if r["method"] == "hash"))
        assert {p.parent.parent.name for p in out.glob("confirm/*/seed1/confirm.json")} == {top["trial"], record["pick"]["baseline"]}
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert cfg["embedding"]["method"] == best["method"] and cfg["embedding"]["compression"] == 10
    assert cfg["training"]["sparse_lr"] == json.loads(best["options"]).get("training.sparse_lr", TrainingConfig().sparse_lr)
    assert cfg["tracking"]["enabled"] is True

    client = mlflow.MlflowClient(db)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tune"]
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].data.metrics["trials_ok"] == len(done)
    assert parent[0].data.metrics["trials_ok"] + parent[0].data.metrics["trials_stopped"] == 3
    assert sorted(r.data.tags["trial"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id) == sorted(
        r["trial"] for r in rows
    )

    stamp = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/trial.json")}  # stopped trials' records too
    capsys.readouterr()
    assert main(args) == 0
    assert "finished before; picking again" in capsys.readouterr().out, "a search whose trials all ended is not run again"
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items()), "no trial is retrained or resumed"
    assert json.loads((out / "best.json").read_text())["trial"] == record["trial"], "the same settings pick the same trial"
    assert main([*args, "--pick-margin", "0"]) == 0
    assert json.loads((out / "best.json").read_text())["trial"] == top["trial"], "margin 0 re-picks the plain best"
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items()), "another margin trains no trial"

    capsys.readouterr()
    assert main([*args, "--confirm-folds", "3"]) == 0
    assert "finished before; picking again" in capsys.readouterr().out, "folds change only the pick"
    folded = json.loads((out / "best.json").read_text())
    assert folded["pick"]["ranked_by"] == "mean AUC over 3 folds" and folded["pick"]["seeds"] == 3, folded
    held = [json.loads((out / "folds" / f"fold{i}" / "dataset.json").read_text())["splits"]["valid"]["rows"] for i in range(3)]
    source = json.loads((tiny / "dataset.json").read_text())["splits"]
    assert sum(held) == source["train"]["rows"] + source["valid"]["rows"], "every train and valid row is held out once"
    runs = sorted(p.parent.parent.name for p in out.glob("confirm/*/fold*-seed*/confirm.json"))
    methods = {r["trial"]: r["method"] for r in rows}
    assert sorted(methods[t] for t in set(runs)) == ["hash", "hybrid"] and len(runs) == 6, "each method's leader on each fold"
    for i, seed in fold_runs(3, 1, seed=0):  # the fold runs are scored on their fold's held-out rows, each at a fresh seed
        assert len(load_tensors(out / "confirm" / runs[0] / f"fold{i}-seed{seed}" / "valid_scores.safetensors")["labels"]) == held[i]
    assert folded["trial"] in runs and folded["pick"]["best_by_valid_auc"] in runs
    for path, t in stamp.items():  # a trial is trained again only when ASHA had stopped it and the folds picked it
        if path.stat().st_mtime_ns != t:
            assert path.parent.name == folded["trial"] and json.loads(path.read_text())["finished"] == "after ASHA"

    rows = list(csv.DictReader((out / "trials.csv").open()))
    best = next(r for r in rows if r["trial"] == json.loads((out / "best.json").read_text())["trial"])
    assert yaml.safe_load((out / "best.yaml").read_text())["embedding"]["method"] == best["method"]
    run = tmp_path / "best-run"
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(run), "--tracking-uri", db]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["embedding_bytes"] == int(best["embedding_bytes"])
    assert abs(metrics["test_auc"] - float(best["test_auc"])) < 0.02
    capsys.readouterr()


def test_impossible_budget_names_the_method_and_bytes(tiny, tmp_path) -> None:
    settings = TuneSettings(dataset=tiny, budget=1000, methods=["hash", "qr"], out=tmp_path / "t", quick=True)
    with pytest.raises(TuneError, match=r"method 'qr' cannot meet the 1000x budget \(\d+ of [\d,]+ bytes\): method 'qr' cannot fit"):
        feasible_methods(settings)
    assert not (tmp_path / "t").exists()
    assert main(["tune", "--dataset", str(tiny), "--budget", "1000", "--methods", "qr", "--out", str(tmp_path / "t"), "--quick"]) == 2


def test_a_run_that_fails_on_a_fold_is_left_out_and_not_retried(tiny, ray_cluster, tmp_path, capsys) -> None:
    sweep = Sweep(SweepSettings(dataset=tiny, methods=["hash", "qr"], budgets=[10, 1000], quick=True, out=tmp_path / "b"))
    configs = {m: (lambda seed, m=m, b=b: sweep.config(Point(m, b, seed))) for m, b in (("hash", 10), ("qr", 1000))}  # qr cannot fit 1000x
    failed = confirm_on_folds(tmp_path / "t", 2, 1, 0, configs)
    assert len(failed) == 2 and all(line.startswith("qr on fold") and "cannot fit" in line for line in failed), failed
    assert "left out of the pick" in capsys.readouterr().err
    hashed, qr = TrialResult("hash", "hash", {}, "ok"), TrialResult("qr", "qr", {}, "ok")
    assert len(fold_scores(tmp_path / "t", 2, 1, 0, hashed)) == 2 and fold_scores(tmp_path / "t", 2, 1, 0, qr) == []
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "t" / "confirm").rglob("*.json")}
    assert confirm_on_folds(tmp_path / "t", 2, 1, 0, configs) == failed, "the same failures, read back"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "t" / "confirm").rglob("*.json")} == stamp, "nothing run again"


def test_one_fold_is_refused_and_small_splits_get_folds_by_default(tiny, tmp_path, monkeypatch) -> None:
    from pydantic import ValidationError

    from recsys.training.bench.tuned import SuiteTune
    from recsys.training.tune.search import planned_search

    with pytest.raises(TuneError, match="confirm_folds 1: 0 .* or at least 2 folds"):
        planned_search(TuneSettings(dataset=tiny, budget=10, methods=["hash"], out=tmp_path / "t", quick=True, confirm_folds=1))
    settings = TuneSettings(dataset=tiny, budget=10, methods=["hash"], out=tmp_path / "t", quick=True)
    assert planned_search(settings)["settings"]["confirm_folds"] == 5, "a small validation split: folds by default"
    assert settings.confirm_folds is None, "the caller's settings are not changed"
    import recsys.training.tune.search as search

    monkeypatch.setattr(search, "SMALL_VALID", 100)
    assert planned_search(settings)["settings"]["confirm_folds"] == 0, "a large one: none"
    with pytest.raises(ValidationError, match="1 fold is no cross-validation"):
        SuiteTune(trials=4, confirm_folds=1)
    assert SuiteTune(trials=4, confirm_folds=5).confirm_folds == 5


def test_search_rows_limit_the_trials_not_the_best_config(tiny, tmp_path) -> None:
    from recsys.training.tune.search import planned_search, trial_config
    from recsys.training.tune.space import TrialSpec

    settings = TuneSettings(dataset=tiny, budget=10, methods=["hash", "qr"], out=tmp_path / "t", search_rows=1500)
    sweep = Sweep(SweepSettings(dataset=tiny, methods=["hash", "qr"], budgets=[10], seeds=1, out=tmp_path / "t", progress=False))
    spec = TrialSpec(1, "qr", {"embedding.options.combiner": "sum"})
    searched, best = trial_config(settings, sweep, spec), trial_config(settings, sweep, spec, search=False)
    assert searched.data.max_train_rows == 1500 and best.data.max_train_rows is None
    assert searched.embedding.options["combiner"] == best.embedding.options["combiner"] == "sum"
    plan = planned_search(TuneSettings(dataset=tiny, budget=10, methods=["hash"], out=tmp_path / "t", search_rows=1500))
    assert plan["settings"]["search_rows"] == 1500, "recorded: another row limit is another search"
    with pytest.raises(TuneError, match="search_rows 0: trials need at least 1 train row"):
        planned_search(TuneSettings(dataset=tiny, budget=10, methods=["hash"], out=tmp_path / "t", search_rows=0))


def test_trials_are_seeded_distinct_and_even() -> None:
    from recsys.training.tune.space import plan_trials

    a = plan_trials(["hash", "qr", "hybrid"], 9, seed=3, embedding_dim=16)
    assert a == plan_trials(["hash", "qr", "hybrid"], 9, seed=3, embedding_dim=16)
    assert a != plan_trials(["hash", "qr", "hybrid"], 9, seed=4, embedding_dim=16)
    assert [t.method for t in a] == ["hash", "qr", "hybrid"] * 3
    assert len({t.name for t in a}) == 9, "no trial repeats another"
    assert [t.options for t in a[:3]] == [{}, {}, {}], "each method at its defaults first"
    assert all(set(t.options) >= {"training.sparse_lr", "training.sparse_eps"} for t in a[3:])
    assert {t.options["embedding.options.combiner"] for t in a[3:] if t.method == "qr"} <= {"mult", "sum", "concat"}
    for t in a:
        assert [o.split("=", 1)[0] for o in t.overrides()] == list(t.options)
        assert all(o.endswith("=null") == (v is None) for o, v in zip(t.overrides(), t.options.values()))


def test_a_draw_that_cannot_meet_the_budget_is_drawn_again() -> None:
    from recsys.training.tune.space import plan_trials

    def accept(method: str, options: dict) -> bool:  # as if qr's concat tables never fit, nor any ε of 1e-8
        return options.get("embedding.options.combiner") != "concat" and options["training.sparse_eps"] != 1e-8

    a = plan_trials(["hash", "qr"], 12, seed=1, embedding_dim=16, accept=accept)
    assert a == plan_trials(["hash", "qr"], 12, seed=1, embedding_dim=16, accept=accept), "still seeded"
    assert len(a) == 12 and [t.index for t in a] == list(range(12))
    assert all(accept(t.method, t.options) for t in a[2:]) and {t.method for t in a[2:]} == {"hash", "qr"}
    assert any(t.options.get("embedding.options.combiner") == "concat" for t in plan_trials(["qr"], 12, seed=1, embedding_dim=16))
    assert [t.method for t in plan_trials(["qr"], 5, seed=1, embedding_dim=16, accept=lambda m, o: False)] == ["qr"], "defaults only"


def test_cli_search_settings_reach_the_search_and_bad_ones_are_refused(tiny, tmp_path, monkeypatch, capsys) -> None:
    import recsys.training.tune.search as search

    seen: list[TuneSettings] = []

    class Stop(Exception):
        pass

    def fake(settings: TuneSettings) -> None:
        seen.append(settings)
        raise Stop

    monkeypatch.setattr(search, "run_search", fake)
    args = ["tune", "--dataset", str(tiny), "--budget", "10", "--out", str(tmp_path / "t")]
    with pytest.raises(Stop):
        main([*args, "--grace-epochs", "3", "--pick-margin", "1.5", "--confirm-seeds", "2", "--search-rows", "500", "--confirm-folds", "4"])
    (s,) = seen
    assert (s.grace_epochs, s.pick_margin, s.confirm_seeds, s.search_rows, s.confirm_folds) == (3, 1.5, 2, 500, 4)
    for flag, value, message in [
        ("--grace-epochs", "0", "must be >= 1"),
        ("--grace-epochs", "two", "expected a whole number"),
        ("--pick-margin", "-1", "must be >= 0"),
    ]:
        with pytest.raises(SystemExit):
            main([*args, flag, value])
        assert message in capsys.readouterr().err, flag


def test_an_auto_trial_is_an_anchor_of_a_real_search(tiny, ray_cluster, tmp_path) -> None:
    """``auto`` (in the default search) runs to its end like the baselines, is compared with on the folds, and a
    ``best.yaml`` naming it trains."""
    out, db = tmp_path / "tune", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["tune", "--dataset", str(tiny), "--budget", "10", "--methods", "hash,auto,unified", "--trials", "3", "--quick"]
    args += ["--out", str(out), "--tracking-uri", db, "--set", "training.batch_size=256", "--set", "training.epochs=2", "--confirm-folds", "2"]
    assert main(args) == 0
    rows = {r["method"]: r for r in csv.DictReader((out / "trials.csv").open())}
    assert rows["auto"]["status"] == "ok", "an anchor's default trial is never stopped"
    record = json.loads((out / "best.json").read_text())
    assert record["pick"]["ranked_by"] == "mean AUC over 2 folds"
    runs = {p.parent.parent.name for p in out.glob("confirm/*/fold*-seed*/confirm.json")}
    assert runs == {r["trial"] for r in rows.values()}, "every method's leader, auto's included, on the folds"
    anchor = record["pick"]["baseline"]
    assert anchor in (rows["hash"]["trial"], rows["auto"]["trial"]), record
    if record["pick"]["best_by_valid_auc"] == rows["unified"]["trial"] and record["trial"] != rows["unified"]["trial"]:
        assert record["trial"] == anchor and "within 2 standard error" in record["pick"]["rule"], record
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    picked = next(r for r in rows.values() if r["trial"] == record["trial"])
    assert cfg["embedding"]["method"] == picked["method"]
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "run"), "--tracking-uri", db]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["embedding_bytes"] == int(picked["embedding_bytes"])
