"""``recsys tune``: a budget-aware search over methods and their options on Ray Tune.

Every trial (``recsys.training.tune.space.plan_trials``, seeded) is one ``recsys bench quality``
point at the budget (``recsys.training.bench.quality.Sweep``: the same defaults, ``--set`` and budget
rules) plus the trial's option overrides, trained by ``recsys.training.run.train_experiment`` in
``DIR/trials/<trial>/`` inside a Ray Tune trial (one CPU, one torch thread). Each epoch's
validation AUC is reported to Tune, whose ASHA scheduler stops the trials that trail their rung
(never the anchors' default trials, baselines and ``auto``, which the pick compares with: ``recsys.training.tune.asha``).
Before any trial runs, each method is built at the budget: one that cannot meet it fails the
search naming the method and the bytes (methods not named with ``--methods``, or all with
``drop_infeasible``, are dropped with that message instead), and a trial's options that cannot
meet it are drawn again (``plan_trials``' ``accept``): such a trial is skipped, not failed. Resume: a trial folder holding ``metrics.json`` for the same config is
read back, so rerunning the same command continues a stopped search; a search whose trials all
ended (none failed) is not run again: a rerun, with another ``pick_margin``, ``confirm_seeds`` or
``confirm_folds`` say, redoes only the pick (``PICK_SETTINGS``). After the search the
driver logs one MLflow parent run with a child run per trial and writes ``trials.csv``,
``pareto.png`` and ``best.yaml`` (see ``recsys.training.tune.report``). The pick's confirmation:
fresh seeds on the validation split (``recsys.training.tune.pick``), or below ``SMALL_VALID``
validation rows by default K folds of train+valid (``recsys.training.tune.folds``).

Example:
    >>> run_search(TuneSettings(dataset=Path("data/small"), budget=10, trials=8, out=Path("tune_out")))  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recsys.assembly import Assembly
from recsys.config import ExperimentConfig, TrackingConfig
from recsys.runfolder import RunFolder
from recsys.training.bench.quality import Point, Sweep, SweepSettings
from recsys.training.jsonfile import read_json, write_json
from recsys.training.tracking import make_tracker
from recsys.training.tune.folds import confirm_on_folds, fold_scores
from recsys.training.tune.pick import ANCHORS, Pick, choose, choose_by_folds, leaders, method_leaders
from recsys.training.tune.report import TrialResult, pareto_plot, write_best, write_csv
from recsys.training.tune.space import TrialSpec, plan_trials

# every searchable method (on the two real 10k samples, cross-validated, the OptEmbed ones led at 10x: docs/results/suite.md),
# and auto, the untuned default, as an anchor the pick must beat beyond noise (recsys.training.tune.pick)
DEFAULT_METHODS = ("hash", "qr", "auto", "unified", "hybrid", "dsl", "optembed", "unified+dsl", "unified+optembed")
SEARCHED = "searched.json"  # written when every trial has ended: each trial's last reported validation AUC


class TuneError(ValueError):
    """A search that cannot run (an impossible budget, no method left)."""


@dataclass
class TuneSettings:
    """What ``recsys tune`` searches; see the CLI for each field's meaning."""

    dataset: Path
    budget: float
    methods: list[str] | None = None  # None: DEFAULT_METHODS, those that cannot meet the budget dropped
    trials: int = 16
    model: str = "deepfm"
    address: str | None = None
    quick: bool = False
    out: Path = Path("tune_out")
    seed: int = 0
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    concurrency: int | None = None  # trials at once (default: the CPUs Ray offers)
    grace_epochs: int = 1  # ASHA: epochs every trial gets before it can be stopped
    search_rows: int | None = None  # trials train on the first N train rows; best.yaml on all of them (None: all)
    confirm_seeds: int = 1  # the best and the best anchor retrained at this many fresh seeds before the pick
    confirm_folds: int | None = None  # >= 2: instead, each method's best retrained on this many folds of train+valid, at
    # confirm_seeds seeds each; 0: off; None: AUTO_FOLDS when the validation split the trials read is below SMALL_VALID rows
    pick_margin: float = 2.0  # the best beats the best anchor (baseline or auto) by this many bootstrap standard errors, else the anchor (0: best)
    drop_infeasible: bool = False  # methods named in `methods` that cannot meet the budget are dropped (printed), not an error
    tracking_uri: str | None = None
    experiment: str = "tune"


def _sweep(s: TuneSettings, methods: list[str]) -> Sweep:
    return Sweep(
        SweepSettings(
            dataset=s.dataset,
            methods=methods,
            budgets=[s.budget],
            seeds=1,
            model=s.model,
            config=s.config,
            sets=s.sets,
            out=s.out,
            quick=s.quick,
            progress=False,
        )
    )


def feasible_methods(s: TuneSettings) -> list[str]:
    """The methods that can meet the budget; raises ``TuneError`` naming each that cannot (when
    named by ``--methods``) or when none can."""
    requested = list(s.methods or DEFAULT_METHODS)
    sweep = _sweep(s, requested)
    ok, problems = [], []
    for name in requested:
        parts = Assembly.of(sweep.config(Point(name, s.budget, 0)), sweep.spec)
        try:
            parts.method()
        except ValueError as exc:
            problems.append(
                f"method '{name}' cannot meet the {s.budget:g}x budget ({sweep.full_bytes // s.budget:,.0f} of {sweep.full_bytes:,} bytes): {exc}"
            )
            continue
        ok.append(name)
    if problems and ((s.methods is not None and not s.drop_infeasible) or not ok):
        raise TuneError("\n".join(problems))
    for line in problems:
        print(f"recsys tune: dropped {line}", file=sys.stderr)
    return ok


def _fits(s: TuneSettings, sweep: Sweep, method: str, options: dict[str, Any]) -> bool:
    """Whether ``method`` with a trial's ``options`` builds at the budget (a trial that cannot is not planned)."""
    try:
        Assembly.of(sweep.config(Point(method, s.budget, s.seed), TrialSpec(0, method, options).overrides()), sweep.spec).method()
    except ValueError:
        return False
    return True


def trial_config(settings: TuneSettings, sweep: Sweep, spec: TrialSpec, search: bool = True, seed: int | None = None) -> ExperimentConfig:
    """A trial's config: its point at the budget (at ``seed``, default the search's) plus its options
    and, while searching (``search``), ``search_rows``' row limit; ``search=False`` is what ``best.yaml`` holds."""
    rows = (f"data.max_train_rows={settings.search_rows}",) if search and settings.search_rows is not None else ()
    return sweep.config(Point(spec.method, settings.budget, settings.seed if seed is None else seed), (*spec.overrides(), *rows))


def _trial_fn(config: dict[str, Any], settings: TuneSettings, methods: list[str], specs: list[dict[str, Any]]) -> None:
    """One Ray Tune trial: train (or read back) the trial's point, reporting each epoch."""
    import torch
    from ray import tune

    from recsys.training.run import train_experiment

    torch.set_num_threads(1)
    spec = next(TrialSpec(**s) for s in specs if TrialSpec(**s).name == config["trial"])
    cfg = trial_config(settings, _sweep(settings, methods), spec)
    folder = Path(settings.out) / "trials" / spec.name
    dump = cfg.model_dump(mode="json")
    record = read_json(folder / "trial.json")
    run = RunFolder(folder)
    if record is not None and record.get("config") == dump and run.metrics.exists():
        metrics = run.read_metrics()
        tune.report({"valid_auc": metrics["valid_auc"], "test_auc": metrics["test_auc"], "done": True})
        return
    if record is not None and record.get("config") != dump:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "trial.json", {"spec": asdict(spec), "config": dump, "status": "running"})
    start = time.perf_counter()

    def report(phase: str, epoch: int, auc: float) -> None:
        tune.report({"valid_auc": auc, "phase": phase, "epoch": epoch, "done": False})

    try:
        metrics = train_experiment(cfg, folder, resume=True, epoch_hook=report)
    except Exception as exc:
        write_json(
            folder / "trial.json",
            {"spec": asdict(spec), "config": dump, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
        )
        raise
    write_json(folder / "trial.json", {"spec": asdict(spec), "config": dump, "status": "ok", "wall_s": time.perf_counter() - start})
    tune.report({"valid_auc": metrics["valid_auc"], "test_auc": metrics["test_auc"], "done": True})


def _collect(settings: TuneSettings, specs: list[TrialSpec], last_auc: dict[int, float]) -> list[TrialResult]:
    out = []
    for spec in specs:
        folder = Path(settings.out) / "trials" / spec.name
        record = read_json(folder / "trial.json") or {}
        result = TrialResult(
            spec.name, spec.method, spec.options, last_valid_auc=last_auc.get(spec.index), wall_s=record.get("wall_s"), error=record.get("error")
        )
        run = RunFolder(folder)
        if record.get("status") == "ok" and run.metrics.exists():
            result.status, result.metrics = "ok", run.read_metrics()
        elif record.get("status") == "running":
            result.status = "stopped"  # ended by the scheduler between two epochs
        out.append(result)
    return out


def _tune(settings: TuneSettings, methods: list[str], specs: list[TrialSpec], epochs: int) -> dict[int, float]:
    """Run the trials on Ray Tune; returns each trial's last reported validation AUC."""
    import ray
    from ray import tune

    from recsys.training.ray_trainer import init_ray
    from recsys.training.tune.asha import KeepBaselinesASHA, kept_trials

    started = init_ray(settings.address, settings.concurrency)
    trainable = tune.with_parameters(_trial_fn, settings=settings, methods=methods, specs=[asdict(s) for s in specs])
    # ASHA over reported epochs (plus the final report); with no epoch past the grace period there is nothing to stop;
    # the anchors' default trials always finish (the pick compares with them)
    scheduler = (
        KeepBaselinesASHA(kept_trials(specs), max_t=epochs + 1, grace_period=settings.grace_epochs) if epochs > settings.grace_epochs else None
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search([s.name for s in specs])},  # names show the method in the progress table
        tune_config=tune.TuneConfig(metric="valid_auc", mode="max", scheduler=scheduler, max_concurrent_trials=settings.concurrency),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str((Path(settings.out) / "ray").resolve()),
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    try:
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    index = {s.name: s.index for s in specs}
    last: dict[int, float] = {}
    for r in grid:
        if r.config is not None and r.metrics and "valid_auc" in r.metrics:
            last[index[r.config["trial"]]] = float(r.metrics["valid_auc"])
    return last


RUNTIME_SETTINGS = ("address", "concurrency", "tracking_uri", "experiment")  # settings that do not change a search's trials
PICK_SETTINGS = ("confirm_seeds", "confirm_folds", "pick_margin")  # settings that change only the pick after the trials
AUTO_FOLDS = 5  # confirm_folds' default on a small validation split
SMALL_VALID = 10_000  # below this many validation rows a paired AUC difference has a standard error above ~0.005


def auto_folds(sweep: Sweep) -> int:
    """``confirm_folds``' default: ``AUTO_FOLDS`` when the validation rows the trials read are
    fewer than ``SMALL_VALID`` (the 10k samples' 1,050: a lead's standard error near 0.01), else 0."""
    rows = sweep.spec.splits["valid"].rows
    limit = sweep.base_config().data.max_eval_rows
    return AUTO_FOLDS if min(rows, limit or rows) < SMALL_VALID else 0


def _resolved(settings: TuneSettings) -> TuneSettings:
    return replace(settings, dataset=Path(settings.dataset).resolve(), out=Path(settings.out).resolve())


def _plan(settings: TuneSettings) -> tuple[list[str], Sweep, list[TrialSpec]]:
    if settings.search_rows is not None and settings.search_rows < 1:
        raise TuneError(f"search_rows {settings.search_rows}: trials need at least 1 train row")
    if settings.confirm_seeds < 0 or settings.pick_margin < 0:
        raise TuneError(f"confirm_seeds {settings.confirm_seeds} and pick_margin {settings.pick_margin:g} must be >= 0")
    if settings.confirm_folds is not None and (settings.confirm_folds == 1 or settings.confirm_folds < 0):
        raise TuneError(f"confirm_folds {settings.confirm_folds}: 0 (confirm on the validation split) or at least 2 folds")
    methods = feasible_methods(settings)
    sweep = _sweep(settings, methods)
    if settings.confirm_folds is None:  # settings is _resolved's copy: the default is decided once, here
        settings.confirm_folds = auto_folds(sweep)
        if settings.confirm_folds:
            print(
                f"recsys tune: a small validation split ({sweep.spec.splits['valid'].rows:,} rows): the pick compares each method's best "
                f"on {settings.confirm_folds} folds of train+valid (--confirm-folds 0: off)",
                flush=True,
            )
    embedding_dim = sweep.base_config().model.embedding_dim
    return methods, sweep, plan_trials(methods, settings.trials, settings.seed, embedding_dim, accept=lambda m, o: _fits(settings, sweep, m, o))


def _plan_record(settings: TuneSettings, methods: list[str], specs: list[TrialSpec]) -> dict[str, Any]:
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "methods": methods,
        "trials": [asdict(s) for s in specs],
    }


def planned_search(settings: TuneSettings) -> dict[str, Any]:
    """What ``run_search`` writes to ``tune.json`` (settings, methods, trials); nothing is trained."""
    settings = _resolved(settings)
    methods, _, specs = _plan(settings)
    return _plan_record(settings, methods, specs)


def same_plan(recorded: dict[str, Any] | None, planned: dict[str, Any], ignore: tuple[str, ...] = RUNTIME_SETTINGS) -> bool:
    """Whether a ``tune.json`` is the search ``planned`` would run (the settings in ``ignore`` aside)."""

    def key(plan: dict[str, Any]) -> dict[str, Any]:
        return plan | {"settings": {k: v for k, v in plan.get("settings", {}).items() if k not in ignore}}

    return recorded is not None and key(recorded) == key(planned)


def run_search(settings: TuneSettings) -> TrialResult | None:
    """Search, log to MLflow, write the reports; returns the best trial (None if none finished)."""
    settings = _resolved(settings)
    methods, sweep, specs = _plan(settings)
    base = sweep.base_config()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "best.json").unlink(missing_ok=True)  # a pick of an earlier plan is not this search's (rewritten when it finishes)
    plan = _plan_record(settings, methods, specs)
    # a finished search of the same trials is not run again: only the pick (and any confirmation it lacks) is redone
    searched = same_plan(read_json(out / "tune.json"), plan, RUNTIME_SETTINGS + PICK_SETTINGS) and (out / SEARCHED).exists()
    if not searched:
        (out / SEARCHED).unlink(missing_ok=True)
    write_json(out / "tune.json", plan)
    tracking = TrackingConfig(
        tracking_uri=settings.tracking_uri or base.tracking.tracking_uri,
        experiment=settings.experiment,
        run_name=f"tune {settings.model} {settings.dataset.name} {settings.budget:g}x",
    )
    parent = make_tracker(tracking, tags={"tune": "budget", "model": settings.model}, run_dir=out)
    parent.log_params(
        {
            "dataset": str(settings.dataset),
            "budget": settings.budget,
            "methods": ",".join(methods),
            "trials": settings.trials,
            "model": settings.model,
            "seed": settings.seed,
            "quick": settings.quick,
        }
    )
    status = "FAILED"
    try:
        if searched:
            print(f"recsys tune: the search in {out} finished before; picking again", flush=True)
            last = {int(k): float(v) for k, v in read_json(out / SEARCHED)["last_valid_auc"].items()}
        else:
            last = _tune(settings, methods, specs, base.training.epochs)
        results = _collect(settings, specs, last)
        if not searched and not any(r.status == "failed" for r in results):  # a failed trial is retried by a rerun
            write_json(out / SEARCHED, {"last_valid_auc": {str(k): v for k, v in last.items()}})
        pick, failures = _pick(settings, sweep, specs, results)
        if pick.trial is not None and pick.trial.status == "stopped":  # picked on the folds: trained to its end, then picked again
            _finish(settings, sweep, next(s for s in specs if s.name == pick.trial.trial))
            results = _collect(settings, specs, last)
            pick, failures = _pick(settings, sweep, specs, results)
        for spec, result in zip(specs, results):
            _log_child(tracking, parent.run_id, spec, result)
        write_csv(results, out / "trials.csv")
        best = pick.trial
        title = f"recsys tune: {settings.dataset.name}, {settings.budget:g}x, {settings.model}"
        pareto_plot(results, out / "pareto.png", title, picked=best)
        if best is not None:
            spec = next(s for s in specs if s.name == best.trial)
            write_best(trial_config(settings, sweep, spec, search=False), out / "best.yaml")
            counts = {k: sum(r.status == k for r in results) for k in ("ok", "stopped", "failed")}
            record = {"trial": best.trial, "method": best.method, "options": best.options, "valid_auc": best.metrics["valid_auc"], "trials": counts}
            write_json(out / "best.json", record | {"pick": pick.record()} | ({"failed_on_folds": failures} if failures else {}))
            print(f"recsys tune: picked {best.trial}: {pick.reason}")
            parent.log_params({"pick_rule": pick.reason})
            parent.log_metrics({"best_valid_auc": best.metrics["valid_auc"], "best_test_auc": best.metrics["test_auc"]})
        parent.log_metrics(
            {
                "trials_ok": sum(r.status == "ok" for r in results),
                "trials_stopped": sum(r.status == "stopped" for r in results),
                "trials_failed": sum(r.status == "failed" for r in results),
            }
        )
        for name in ("trials.csv", "pareto.png", "best.yaml", "tune.json"):
            if (out / name).exists():
                parent.log_artifact(out / name)
        status = "FINISHED"
        return best
    finally:
        parent.close(status)


def confirm_seeds(settings: TuneSettings) -> list[int]:
    """The fresh seeds the leaders are retrained at (the trials trained at ``settings.seed``)."""
    return [settings.seed + 1 + i for i in range(settings.confirm_seeds)]


def _confirm_folder(settings: TuneSettings, trial: str, seed: int) -> Path:
    return Path(settings.out) / "confirm" / trial / f"seed{seed}"


def _confirm(settings: TuneSettings, sweep: Sweep, specs: list[TrialSpec], trials: list[TrialResult]) -> None:
    """Retrain the best and the best anchor trial at the fresh seeds (read back when done before)."""
    from recsys.training.run import train_experiment

    if len(trials) < 2 or trials[0] is trials[1]:
        return  # no baseline, or the best is one: nothing to compare
    for result in trials:
        spec = next(s for s in specs if s.name == result.trial)
        for seed in confirm_seeds(settings):
            cfg, folder = trial_config(settings, sweep, spec, seed=seed), _confirm_folder(settings, spec.name, seed)
            dump = cfg.model_dump(mode="json")
            record = read_json(folder / "confirm.json")
            if record is not None and record.get("config") == dump and RunFolder(folder).valid_scores.exists():
                continue
            shutil.rmtree(folder, ignore_errors=True)
            print(f"recsys tune: confirming {spec.name} at seed {seed}", flush=True)
            folder.mkdir(parents=True)
            train_experiment(cfg, folder)
            write_json(folder / "confirm.json", {"trial": spec.name, "seed": seed, "config": dump})


def _pick(settings: TuneSettings, sweep: Sweep, specs: list[TrialSpec], results: list[TrialResult]) -> tuple[Pick, list[str]]:
    """Confirm the leaders (at fresh seeds, or each method's best on the folds) and pick; also
    the runs on the folds that failed (their trials left out)."""
    k = settings.confirm_folds
    if settings.pick_margin <= 0:
        return choose(results, lambda r: [], 0.0, settings.seed), []
    if not k:
        _confirm(settings, sweep, specs, [r for r in leaders(results) if r is not None])
        return choose(results, lambda r: _valid_scores(settings, r), settings.pick_margin, settings.seed), []
    candidates, per_fold, failures = method_leaders(results), max(1, settings.confirm_seeds), []
    if len({r.method in ANCHORS for r in candidates}) == 2:  # an anchor and another method: compare on the folds
        configs = {r.trial: _at_seed(settings, sweep, next(s for s in specs if s.name == r.trial)) for r in candidates}
        failures = confirm_on_folds(settings.out, k, per_fold, settings.seed, configs, settings.address, settings.concurrency)
    scores = lambda r: fold_scores(settings.out, k, per_fold, settings.seed, r)  # noqa: E731
    return choose_by_folds(candidates, scores, settings.pick_margin, settings.seed, per_fold), failures


def _finish(settings: TuneSettings, sweep: Sweep, spec: TrialSpec) -> None:
    """Train a trial that ASHA stopped to its end, from its checkpoint, in its own folder."""
    from recsys.training.run import train_experiment

    cfg, folder = trial_config(settings, sweep, spec), Path(settings.out) / "trials" / spec.name
    dump = cfg.model_dump(mode="json")
    print(f"recsys tune: finishing {spec.name} (stopped by ASHA, best on the folds)", flush=True)
    start = time.perf_counter()
    train_experiment(cfg, folder, resume=True)
    write_json(
        folder / "trial.json", {"spec": asdict(spec), "config": dump, "status": "ok", "wall_s": time.perf_counter() - start, "finished": "after ASHA"}
    )


def _at_seed(settings: TuneSettings, sweep: Sweep, spec: TrialSpec) -> Callable[[int], ExperimentConfig]:
    return lambda seed: trial_config(settings, sweep, spec, seed=seed)


def _valid_scores(settings: TuneSettings, result: TrialResult) -> list[tuple[Any, Any]]:
    """A finished trial's validation labels and probabilities at its seed and each confirmation seed
    it was retrained at (stops at the first missing one)."""
    out = []
    folders = [Path(settings.out) / "trials" / result.trial] + [_confirm_folder(settings, result.trial, s) for s in confirm_seeds(settings)]
    for folder in folders:
        scores = RunFolder(folder).read_scores()
        if scores is None:
            break
        out.append(scores)
    return out


def _log_child(tracking: TrackingConfig, parent_id: str | None, spec: TrialSpec, result: TrialResult) -> None:
    """A child run of the search's parent run: the trial's options and metrics."""
    tags = {"method": spec.method, "trial": spec.name, "status": result.status}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    child = make_tracker(tracking.model_copy(update={"run_name": spec.name}), tags=tags)
    child.log_params({"method": spec.method, **spec.options})
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if result.last_valid_auc is not None and "valid_auc" not in metrics:
        metrics["valid_auc"] = result.last_valid_auc
    if metrics:
        child.log_metrics(metrics)
    child.close("FINISHED" if result.status == "ok" else "KILLED" if result.status == "stopped" else "FAILED")
