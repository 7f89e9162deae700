"""``recsys bench quality``: every method at every memory budget, AUC against bytes, in one MLflow parent run.

A point is (method, budget, seed); ``full`` runs once per seed, uncompressed. Each point is
``recsys.training.run.train_experiment`` (tracking of the inner run off) in ``<out>/points/<name>/``
with the config built from the base config, the mode's defaults, ``--set`` and the method's
row of ``recsys.training.bench.methods.SWEEP_METHODS``. ``<out>/points/<name>/point.json`` records
the point, its config, its status, wall seconds and, on failure, the error message.

Resume: a point whose folder holds ``metrics.json`` and whose recorded config is the one it
would be trained with now is read back, not retrained (``rerun=True`` retrains everything); a
point interrupted mid-run continues from its finished phases. Phases a method declares
budget-independent (``shared_phases``: OptEmbed's supernet) are copied from another budget's
folder of the same method and seed when their configs agree apart from the budget.

A point that raises (a method that cannot meet a budget, a bad option) is recorded as failed
with its message; the sweep goes on. Every point (trained or read back) is logged as a child
run of one parent run per invocation (params, metrics; failed ones with status FAILED and an
``error`` tag); the parent gets ``results.csv``, ``results.md``, ``pareto.png``, ``sweep.json``.

Example:
    >>> settings = SweepSettings(dataset=Path("data/synth_1m"), methods=["full", "hash"], budgets=[10.0])  # doctest: +SKIP
    >>> rows = run_sweep(settings)                                                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recsys.config import ExperimentConfig, TrackingConfig, apply_override, flatten, load_raw, validate_config
from recsys.embeddings import MethodContext, MethodSpec
from recsys.features import load_dataset_spec
from recsys.runfolder import RunFolder
from recsys.training.bench.methods import DEFAULT_METHODS, Budget, sweep_method
from recsys.training.bench.report import PointResult, markdown, pareto_plot, summarise, write_csv
from recsys.training.jsonfile import read_json, write_json
from recsys.training.tracking import Tracker, make_tracker

DEFAULT_BUDGETS = (10.0, 100.0, 1000.0)
# Defaults: every train row, up to 3 epochs with early stopping (patience 1: each point keeps its best validation
# epoch; uncompressed models peak after one epoch, compressed ones keep improving for two or three, so one epoch
# for all understates them), 50k valid/test rows. Earlier, at 1 epoch: about 11 minutes per seed at 1M synthetic criteo rows on
# 2 CPU cores with one torch thread (measured at 400k train rows: 5m49s per seed; see the CLI help).
DEFAULT_OVERRIDES = ("training.epochs=3", "training.patience=1", "data.max_eval_rows=50000")
QUICK_OVERRIDES = ("training.epochs=1", "data.max_train_rows=20000", "data.max_eval_rows=5000", "training.log_every=5")
ALWAYS = ("tracking.enabled=false", "training.progress=false")
TUNED = "tuned"  # the point of a tuner's pick: its best.yaml (``SweepSettings.tuned``) at the point's seed


@dataclass
class SweepSettings:
    """What ``recsys bench quality`` sweeps; see the CLI for each field's meaning."""

    dataset: Path
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    seeds: int = 2
    model: str = "dlrm"
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    out: Path = Path("bench_out/quality")
    quick: bool = False
    rerun: bool = False
    tracking_uri: str | None = None
    experiment: str = "bench-quality"
    progress: bool = True
    threads: int | None = 1  # torch intra-op threads (None: torch's default); see run_sweep
    report_only: bool = False  # report only points already recorded (finished or failed) with their current config
    tuned: dict[float, str] = field(default_factory=dict)  # budget -> a tuner's best.yaml: a `tuned` point per budget and seed


@dataclass(frozen=True)
class Point:
    method: str
    budget: float | None
    seed: int

    @property
    def name(self) -> str:
        budget = "" if self.budget is None else f"_{self.budget:g}x"
        return f"{self.method}{budget}_seed{self.seed}"


def scoped_set(assignment: str) -> tuple[str, str] | None:
    """``(method, "KEY=VALUE")`` of a method-scoped set ``METHOD:KEY=VALUE``; None for a plain one.

    >>> scoped_set("unified:embedding.options.chunk_dim=4")
    ('unified', 'embedding.options.chunk_dim=4')
    >>> scoped_set("training.epochs=2") is None
    True
    """
    key = assignment.split("=", 1)[0]
    if ":" not in key:
        return None
    method, rest = assignment.split(":", 1)
    sweep_method(method)  # an unknown method is an error naming the known ones
    return method, rest


def plan(settings: SweepSettings) -> list[Point]:
    """Every point, method by method; ``full`` (no budget function) once per seed; then the ``tuned`` points."""
    seeds = range(1 if settings.quick else settings.seeds)
    points = []
    for method in settings.methods:
        entry = sweep_method(method)
        budgets: list[float | None] = [None] if entry.budget is None else list(settings.budgets)
        points += [Point(method, b, s) for b in budgets for s in seeds]
    return points + [Point(TUNED, float(b), s) for b in settings.tuned for s in seeds]


class Sweep:
    """Builds point configs against one dataset and trains or reads back each point."""

    def __init__(self, settings: SweepSettings) -> None:
        self.s = settings
        self.root = Path(settings.out) / "points"
        base = self.base_config()
        self.spec = load_dataset_spec(base.data.path)
        self.embedding_dim = base.model.embedding_dim
        self.full_bytes = MethodContext.from_spec(self.spec, self.embedding_dim).full_bytes

    def _common(self) -> list[str]:
        mode = QUICK_OVERRIDES if self.s.quick else DEFAULT_OVERRIDES
        common = [s for s in self.s.sets if scoped_set(s) is None]
        return [f"data.path={self.s.dataset}", f"model.name={self.s.model}", *mode, *common, *ALWAYS]

    def _scoped(self, method: str) -> list[str]:
        """The ``METHOD:KEY=VALUE`` sets of ``method``, as plain overrides."""
        return [scoped[1] for scoped in map(scoped_set, self.s.sets) if scoped is not None and scoped[0] == method]

    def base_config(self) -> ExperimentConfig:
        return self._validate(self._common())

    def _validate(self, overrides: list[str], embedding: MethodSpec | None = None, after: list[str] | None = None) -> ExperimentConfig:
        """The config file with ``overrides``, then the typed ``embedding`` (method and options, merged
        over any options set so far), then the ``after`` overrides."""
        raw = load_raw(self.s.config) if self.s.config is not None else {}
        for assignment in overrides:
            apply_override(raw, assignment)
        if embedding is not None:
            section = raw.setdefault("embedding", {})
            typed = embedding.model_dump(mode="json", exclude_unset=True)
            section["method"], section["options"] = typed["method"], _merged(section.get("options") or {}, typed.get("options", {}))
        for assignment in after or []:
            apply_override(raw, assignment)
        return validate_config(raw, str(self.s.config or "<bench defaults>"))

    def budget(self, point: Point) -> Budget | None:
        if point.budget is None:
            return None
        return Budget(point.budget, int(self.full_bytes // point.budget), self.full_bytes, self.embedding_dim)

    def budget_overrides(self, point: Point) -> list[str]:
        if point.method == TUNED:
            return []  # best.yaml holds them
        entry, budget = sweep_method(point.method), self.budget(point)
        return [] if entry.budget is None or budget is None else entry.budget(budget)

    def config(self, point: Point, extra: tuple[str, ...] = ()) -> ExperimentConfig:
        """The point's config; ``extra`` overrides come last (a tuning trial's options). A ``tuned``
        point is its budget's best.yaml as written, with the point's seed (and the bench's tracking off)."""
        if point.method == TUNED:
            path = self.s.tuned[float(point.budget or 0)]
            raw = load_raw(path)
            for assignment in (*ALWAYS, f"training.seed={point.seed}", *extra):
                apply_override(raw, assignment)
            return validate_config(raw, str(path))
        entry = sweep_method(point.method)
        return self._validate(
            self._common(),
            entry.spec(self.s.quick),
            [*self.budget_overrides(point), *self._scoped(point.method), f"training.seed={point.seed}", *extra],
        )

    def folder(self, point: Point) -> Path:
        return self.root / point.name

    def recorded(self, point: Point) -> bool:
        """Whether ``point`` has a result with its current config: finished (``metrics.json``) or failed."""
        record = read_json(self.folder(point) / "point.json")
        if record is None:
            return False
        try:
            dump = self.config(point).model_dump(mode="json")
        except Exception:  # noqa: BLE001 - a config that does not build: recorded if it failed so before
            return record.get("status") == "failed"
        return record.get("config") == dump and ((self.folder(point) / "metrics.json").exists() or record.get("status") == "failed")

    def run(self, point: Point) -> PointResult:
        """Train ``point`` (or read it back); failures are returned, not raised."""
        budget = self.budget(point)
        result = PointResult(point.method, point.budget, point.seed, budget.budget_bytes if budget else None)
        folder = self.folder(point)
        try:
            cfg = self.config(point)
        except Exception as exc:  # noqa: BLE001 - an invalid point is a result, not the end of the sweep
            return self._failed(result, folder, None, exc)
        dump = cfg.model_dump(mode="json")
        record = read_json(folder / "point.json")
        if self.s.rerun or (record is None and folder.exists()) or (record is not None and record.get("config") != dump):
            shutil.rmtree(folder, ignore_errors=True)  # from scratch: asked to, a folder not a sweep's, or another config
        elif RunFolder(folder).metrics.exists() and record is not None:
            result.metrics = RunFolder(folder).read_metrics()
            result.wall_s, result.cpu_s, result.resumed = record.get("wall_s"), record.get("cpu_s"), True
            return result
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "point.json", {"point": asdict(point), "config": dump, "status": "running"})
        self._share_phases(point, dump)
        from recsys.training.run import train_experiment

        start, cpu = time.perf_counter(), time.process_time()
        try:
            result.metrics = train_experiment(cfg, folder, resume=True)
        except Exception as exc:  # noqa: BLE001
            result.wall_s = time.perf_counter() - start
            return self._failed(result, folder, dump, exc)
        result.wall_s = time.perf_counter() - start
        result.cpu_s = time.process_time() - cpu  # CPU seconds of every thread: a shared machine's load hits wall_s, less this
        write_json(folder / "point.json", {"point": asdict(point), "config": dump, "status": "ok", "wall_s": result.wall_s, "cpu_s": result.cpu_s})
        return result

    def _failed(self, result: PointResult, folder: Path, dump: dict[str, Any] | None, exc: BaseException) -> PointResult:
        result.error = f"{type(exc).__name__}: {exc}"
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / "point.json",
            {
                "point": {"method": result.method, "budget": result.budget, "seed": result.seed},
                "config": dump,
                "status": "failed",
                "error": result.error,
                "wall_s": result.wall_s,
                "traceback": traceback.format_exc(),
            },
        )
        return result

    def _share_phases(self, point: Point, dump: dict[str, Any]) -> None:
        """Copy the method's budget-independent phases from a finished sibling (same method and
        seed, another budget) whose config agrees apart from the budget's keys."""
        phases = () if point.method == TUNED else sweep_method(point.method).shared_phases
        if not phases:
            return
        own_keys = _keys(self.budget_overrides(point))
        folder = self.folder(point)
        for sibling in sorted(self.root.glob(f"{_glob_escape(point.method)}_*x_seed{point.seed}")):
            record = read_json(sibling / "point.json")
            if sibling == folder or record is None or record.get("config") is None:
                continue
            other = Point(**record["point"])
            keys = own_keys | _keys(self.budget_overrides(other))
            if other.method != point.method or _drop(record["config"], keys) != _drop(dump, keys):
                continue
            source_run, target_run = RunFolder(sibling), RunFolder(folder)
            for phase in phases:
                source, target = source_run.phase(phase), target_run.phase(phase)
                if source.finished() and not target.root.exists():
                    shutil.copytree(source.root, target.root)
                    shutil.copy(source_run.initial, target_run.initial)
            return


def _merged(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``into`` with ``values`` written over it, nested mappings merged key by key."""
    out = dict(into)
    for key, value in values.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0] for o in overrides}


def _drop(config: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """``config`` without the dotted ``keys``."""
    out = json.loads(json.dumps(config))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _log_child(settings: SweepSettings, parent: Tracker, sweep: Sweep, point: Point, result: PointResult) -> None:
    """A child run of ``parent``: the point's params, its metrics (or its error)."""
    tags = {
        "mlflow.parentRunId": str(parent.run_id),
        "method": point.method,
        "budget": f"{point.budget or 1:g}",
        "seed": str(point.seed),
        "resumed": str(result.resumed).lower(),
        "status": "ok" if result.ok else "failed",
    }
    if result.error:
        tags["error"] = result.error[:4900]
    cfg = TrackingConfig(tracking_uri=settings.tracking_uri, experiment=settings.experiment, run_name=point.name)
    child = make_tracker(cfg, tags=tags)
    params: dict[str, Any] = {
        "bench.method": point.method,
        "bench.budget": point.budget or 1,
        "bench.seed": point.seed,
        "bench.budget_bytes": result.budget_bytes,
    }
    record = read_json(sweep.folder(point) / "point.json") or {}
    if record.get("config"):
        params |= flatten(ExperimentConfig.model_validate(record["config"]))
    child.log_params(params)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics |= {k: v for k, v in (("wall_s", result.wall_s), ("cpu_s", result.cpu_s)) if v is not None}
    if metrics:
        child.log_metrics(metrics)
    for path in (RunFolder(sweep.folder(point)).metrics, sweep.folder(point) / "point.json"):
        if path.exists():
            child.log_artifact(path)
    child.close("FINISHED" if result.ok else "FAILED")


def write_reports(settings: SweepSettings, results: list[PointResult], oracle_auc: float | None) -> tuple[list[dict[str, Any]], list[Path]]:
    """``results.csv``, ``results.md`` and ``pareto.png`` in ``settings.out``."""
    out = Path(settings.out)
    rows = summarise(results)
    seeds = 1 if settings.quick else settings.seeds
    title = f"Quality at equal bytes: {settings.model} on `{settings.dataset}`, {seeds} seed(s){', quick mode' if settings.quick else ''}"
    if oracle_auc is not None:
        title += f"; oracle test AUC {oracle_auc:.4f}"
    paths = [out / "results.csv", out / "results.md", out / "pareto.png"]
    write_csv(rows, paths[0])
    paths[1].write_text(markdown(rows, f"### {title}"))
    pareto_plot(rows, paths[2], f"{settings.model} on {Path(settings.dataset).name}: test AUC vs bytes", oracle_auc)
    return rows, paths


def run_sweep(settings: SweepSettings) -> list[dict[str, Any]]:
    """Train (or read back) every point, write the reports, log it all to MLflow; the table's rows."""
    return sweep_results(settings)[0]


def sweep_results(settings: SweepSettings, parent_run_id: str | None = None) -> tuple[list[dict[str, Any]], list[PointResult]]:
    """``run_sweep``'s rows and its point results; with ``parent_run_id`` the sweep's MLflow run is
    a child of that run (a suite's dataset) and its points are grandchildren."""
    from tqdm.auto import tqdm

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads is not None:
        # One thread by default: DLRM-sized steps gain little from a second one on 2 cores, and on cores
        # shared with other torch jobs oversubscribed intra-op threads made steps ~50x slower (measured).
        import torch

        torch.set_num_threads(settings.threads)
    sweep = Sweep(settings)
    if settings.tracking_uri is None:  # else the base config's, else MLFLOW_TRACKING_URI / sqlite:///mlflow.db
        settings = replace(settings, tracking_uri=sweep.base_config().tracking.tracking_uri)
    points = plan(settings)
    if settings.report_only:
        points = [p for p in points if sweep.recorded(p)]  # failed ones run again: a budget a method cannot meet fails fast
    write_json(out / "sweep.json", {"settings": asdict(settings), "points": [p.name for p in points], "full_bytes": sweep.full_bytes})
    tracking = TrackingConfig(
        tracking_uri=settings.tracking_uri, experiment=settings.experiment, run_name=f"bench-quality {settings.model} {Path(settings.dataset).name}"
    )
    tags = {"bench": "quality", "model": settings.model} | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
    parent = make_tracker(tracking, tags=tags, run_dir=out)
    parent.log_params(
        {
            "dataset": str(settings.dataset),
            "methods": ",".join(settings.methods),
            "model": settings.model,
            "budgets": ",".join(f"{b:g}" for b in settings.budgets),
            "seeds": 1 if settings.quick else settings.seeds,
            "quick": settings.quick,
            "set": " ".join(settings.sets),
            "points": len(points),
            "threads": settings.threads,
        }
    )
    status, results = "KILLED", []
    try:
        bar = tqdm(points, desc="bench quality", unit="point", disable=not settings.progress)
        for point in bar:
            bar.set_postfix_str(point.name)
            result = sweep.run(point)
            results.append(result)
            note = (
                "read back"
                if result.resumed
                else ("failed: " + (result.error or "")[:200] if not result.ok else f"{result.wall_s:.0f} s, {result.cpu_s:.0f} CPU s")
            )
            bar.write(
                f"{point.name}: "
                + (f"test AUC {result.metrics['test_auc']:.4f}, {result.metrics['embedding_bytes']:,} bytes ({note})" if result.metrics else note)
            )
            _log_child(settings, parent, sweep, point, result)
        oracle = sweep.spec.splits["test"].oracle
        rows, paths = write_reports(settings, results, oracle.auc if oracle else None)
        parent.log_metrics(
            {
                "points_ok": sum(r.ok for r in results),
                "points_failed": sum(not r.ok for r in results),
                "train_wall_s": sum(r.wall_s or 0.0 for r in results if not r.resumed),
                "train_cpu_s": sum(r.cpu_s or 0.0 for r in results if not r.resumed),
            }
        )
        for path in [*paths, out / "sweep.json"]:
            parent.log_artifact(path)
        status = "FINISHED"
        return rows, results
    finally:
        parent.close(status)
