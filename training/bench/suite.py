"""``recsys bench quality`` over several datasets: one sweep per dataset, a summary per budget.

A suite is datasets (each with a label and optional ``--set`` overrides of its own), and
optionally the methods, budgets, seeds, model and common sets, given on the command line
(several ``--dataset``) or in a suite YAML (``--suite FILE``; a command-line option given
explicitly wins over the file's). Each dataset is a ``recsys bench quality`` sweep in
``<out>/<label>/`` (resumable point by point, as a single sweep); the suite then writes
``summary.md``, ``summary.csv``, ``summary.json`` (``recsys.training.bench.summary``) and
``pareto.png`` (the datasets' Pareto plots side by side) in ``<out>``. MLflow: one parent run
for the suite, a child run per dataset, its points as grandchildren.

Suite YAML:

.. code-block:: yaml

    datasets:
      - {label: criteo_sample, path: data/criteo_sample}
      - {label: small_real, path: data/small_real, sets: [training.epochs=5]}
      - {label: big, path: data/big, methods: [full, hash, unified], budgets: [10]}   # its own methods, budgets
    methods: [full, hash, qr, hybrid]       # optional (default: every benchmark method)
    budgets: [10, 100]                      # optional (default: 10, 100, 1000)
    seeds: 2                                # optional
    model: deepfm                           # optional (default: dlrm)
    sets: [training.batch_size=1024]        # optional, every dataset
    bootstrap: {resamples: 1000, seed: 0}   # optional; resamples 0: no intervals
    tune: {trials: 14, methods: [qr, hybrid, dsl, unified+dsl, unified]}   # optional: the `tuned` column

With ``tune`` (``recsys.training.bench.tuned.SuiteTune``: trials, methods, budgets, seed,
concurrency, grace_epochs) every dataset is first searched by ``recsys tune`` at each budget
(train/valid only, the pick by validation AUC), and the pick's ``best.yaml`` is trained at the
suite's seeds and scored on test like every point: the ``tuned`` column, its configuration
named per dataset in the summary.

Relative dataset paths are relative to the working directory, as with ``--dataset``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys.config import ConfigError, TrackingConfig
from recsys.training.bench.methods import sweep_method
from recsys.training.bench.quality import Point, Sweep, SweepSettings, sweep_results
from recsys.training.bench.report import PointResult
from recsys.training.bench.summary import DatasetOutcome, summarise_suite, write_summary
from recsys.training.bench.tuned import SuiteTune, tune_dataset
from recsys.training.tracking import make_tracker

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteDataset(_Strict):
    label: str  # folder name under the suite's --out and the dataset's name in the tables
    path: str  # dataset folder (holds dataset.json)
    sets: list[str] = Field(default_factory=list)  # --set overrides of this dataset's points only
    methods: list[str] | None = None  # this dataset's methods (default: the suite's)
    budgets: list[float] | None = None  # this dataset's budgets (default: the suite's)

    @field_validator("label")
    @classmethod
    def _label(cls, label: str) -> str:
        if not LABEL.match(label):
            raise ValueError(f"label '{label}' must be letters, digits, '_', '.', '-' (it names a folder)")
        return label

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if "://" not in path and not (Path(path) / "dataset.json").exists():
            raise ValueError(f"no dataset.json in '{path}' (convert or generate the dataset first)")
        return path

    @field_validator("sets")
    @classmethod
    def _sets(cls, sets: list[str]) -> list[str]:
        for s in sets:
            if "=" not in s:
                raise ValueError(f"'{s}' is not KEY=VALUE")
        return sets

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str] | None) -> list[str] | None:
        return _known_methods(methods)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets: list[float] | None) -> list[float] | None:
        return _ratios(budgets)


def _known_methods(methods: list[str] | None) -> list[str] | None:
    for m in methods or []:
        try:
            sweep_method(m)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
    return methods


def _ratios(budgets: list[float] | None) -> list[float] | None:
    for b in budgets or []:
        if not b > 1:
            raise ValueError(f"budget {b:g} must be a compression ratio above 1 (full bytes / budget)")
    return budgets


class BootstrapConfig(_Strict):
    resamples: int = Field(1000, ge=0)  # bootstrap resamples of the test rows (0: no confidence intervals)
    seed: int = 0  # seed of the resampled rows (the same rows for every method of a dataset)
    level: float = Field(0.95, gt=0, lt=1)  # confidence level of the percentile intervals


class SuiteConfig(_Strict):
    datasets: list[SuiteDataset] = Field(min_length=1)
    methods: list[str] | None = None
    budgets: list[float] | None = None
    seeds: int | None = Field(None, ge=1)
    model: Literal["dlrm", "dcnv2", "deepfm"] | None = None
    sets: list[str] = Field(default_factory=list)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    tune: SuiteTune | None = None  # a tuner's pick per dataset and budget: the `tuned` column

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str] | None) -> list[str] | None:
        return _known_methods(methods)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets: list[float] | None) -> list[float] | None:
        return _ratios(budgets)

    @model_validator(mode="after")
    def _unique_labels(self) -> SuiteConfig:
        labels = [d.label for d in self.datasets]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"dataset labels must be unique; repeated: {', '.join(twice)}")
        return self


def _format(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{source}: {key}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def validate_suite(raw: Any, source: str = "<suite>") -> SuiteConfig:
    """A ``SuiteConfig`` from parsed YAML; errors name ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (root): a suite is a mapping with a 'datasets' list, got {type(raw).__name__}")
    try:
        return SuiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_suite(path: str | Path) -> SuiteConfig:
    """The suite YAML at ``path``, validated (errors name the file and the key)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    return validate_suite(raw, str(path))


def suite_from_datasets(paths: list[str]) -> SuiteConfig:
    """A suite of ``--dataset`` folders, labelled by their folder names."""
    return validate_suite({"datasets": [{"label": Path(p.rstrip("/")).name, "path": p} for p in paths]}, "--dataset")


def resolve_choices(
    suite: SuiteConfig | None, methods: list[str] | None, budgets: list[float] | None, seeds: int | None, model: str | None
) -> tuple[list[str], list[float], int, str]:
    """Methods, budgets, seeds and model: the command line's when given, else the suite file's, else the defaults."""
    from recsys.training.bench.methods import DEFAULT_METHODS
    from recsys.training.bench.quality import DEFAULT_BUDGETS

    def pick(given: Any, in_file: Any, default: Any) -> Any:
        return given if given is not None else (in_file if in_file is not None else default)

    s = suite or SuiteConfig.model_construct(datasets=[], methods=None, budgets=None, seeds=None, model=None)
    return (
        pick(methods, s.methods, list(DEFAULT_METHODS)),
        pick(budgets, s.budgets, list(DEFAULT_BUDGETS)),
        pick(seeds, s.seeds, 2),
        pick(model, s.model, "dlrm"),
    )


def dataset_settings(suite: SuiteConfig, base: SweepSettings, dataset: SuiteDataset) -> SweepSettings:
    """The sweep of one dataset: ``base`` (methods, budgets, ...) with the dataset's path, folder, sets
    and, where it names its own, methods and budgets."""
    return replace(
        base,
        dataset=Path(dataset.path),
        out=Path(base.out) / dataset.label,
        sets=[*suite.sets, *base.sets, *dataset.sets],
        methods=dataset.methods or base.methods,
        budgets=dataset.budgets or base.budgets,
    )


def point_folder(settings: SweepSettings, result: PointResult) -> Path:
    return Path(settings.out) / "points" / Point(result.method, result.budget, result.seed).name


def run_suite(suite: SuiteConfig, base: SweepSettings) -> list[dict[str, Any]]:
    """Every dataset's sweep, then the summary files and the side-by-side Pareto plot; the summary rows."""
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    first = dataset_settings(suite, base, suite.datasets[0])
    if base.tracking_uri is None:
        base = replace(base, tracking_uri=Sweep(first).base_config().tracking.tracking_uri)
    tracking = TrackingConfig(
        tracking_uri=base.tracking_uri, experiment=base.experiment, run_name=f"bench-quality suite {base.model} ({len(suite.datasets)} datasets)"
    )
    parent = make_tracker(tracking, tags={"bench": "quality-suite", "model": base.model}, run_dir=out)
    parent.log_params(
        {
            "datasets": ",".join(d.label for d in suite.datasets),
            "methods": ",".join(base.methods),
            "model": base.model,
            "budgets": ",".join(f"{b:g}" for b in base.budgets),
            "seeds": base.seeds,
            "set": " ".join([*suite.sets, *base.sets]),
            "bootstrap_resamples": suite.bootstrap.resamples,
            "tune_trials": suite.tune.trials if suite.tune else 0,
        }
    )
    status = "KILLED"
    try:
        outcomes = []
        for dataset in suite.datasets:
            settings = dataset_settings(suite, base, dataset)
            print(f"=== dataset {dataset.label}: {dataset.path}", flush=True)
            picks = tune_dataset(suite.tune, settings, dataset.label, base.report_only) if suite.tune else []
            settings = replace(settings, tuned={p.budget: str(p.best_yaml) for p in picks})
            rows, results = sweep_results(settings, parent_run_id=str(parent.run_id))
            oracle = Sweep(settings).spec.splits["test"].oracle
            outcomes.append(DatasetOutcome(dataset.label, rows, results, [point_folder(settings, r) for r in results], oracle, picks))
        summary = summarise_suite(outcomes, suite.bootstrap.resamples, suite.bootstrap.seed, suite.bootstrap.level)
        paths = write_summary(summary, outcomes, out, f"{base.model}, {1 if base.quick else base.seeds} seed(s)")
        for path in paths:
            parent.log_artifact(path)
        parent.log_metrics({"datasets": len(outcomes), "points_ok": sum(r.ok for o in outcomes for r in o.results)})
        status = "FINISHED"
        return summary
    finally:
        parent.close(status)
