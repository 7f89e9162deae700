"""The suite's ``tuned`` column: ``recsys tune`` per dataset and budget, its pick scored like every point.

With a ``tune`` key in the suite YAML (``SuiteTune``), each dataset's sweep first runs one search
per budget (``recsys.training.tune.search.run_search``: train/valid only, the pick by validation
AUC; the test split is never read to choose) in ``<out>/<label>/tune/<budget>x/``, with the
suite's model, sets and the dataset's own sets. The pick's ``best.yaml`` then becomes the
sweep's ``tuned`` point at each of the suite's seeds (``recsys.training.bench.quality.TUNED``):
trained and scored on test with the other points, so it gets the same paired bootstrap and
appears in the Δ tables and in wins/losses.

Resume: a search whose ``tune.json`` (settings and planned trials) is unchanged and that wrote
``best.yaml`` is not run again (rerunning it would finish the trials ASHA stopped and could move
the pick); one stopped part way is resumed trial by trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsys.training.bench.methods import sweep_method
from recsys.training.bench.quality import SweepSettings
from recsys.training.jsonfile import read_json
from recsys.training.tune.search import TuneSettings, planned_search, run_search, same_plan
from recsys.training.tune.space import spaces


class SuiteTune(BaseModel):
    """The suite YAML's ``tune`` key: a tuner's pick per dataset and budget, as the ``tuned`` column."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(ge=1)  # trials per (dataset, budget), defaults of each method first (recsys.training.tune.space)
    methods: list[str] | None = None  # searched methods (default: recsys tune's); those that cannot meet a budget are dropped
    budgets: list[float] | None = None  # budgets tuned (default: every budget of the dataset's sweep)
    seed: int = 0  # seed of the trial plan and of the trials' training
    concurrency: int | None = Field(None, ge=1)  # trials at once (default: the CPUs Ray offers)
    grace_epochs: int = Field(1, ge=1)  # ASHA: epochs every trial gets before it can be stopped
    search_rows: int | None = Field(None, ge=1)  # recsys tune --search-rows: trials on the first N train rows
    confirm_seeds: int = Field(1, ge=0)  # recsys tune --confirm-seeds: the leaders retrained at fresh seeds
    confirm_folds: int | None = Field(None, ge=0)  # recsys tune --confirm-folds: on K folds of train+valid (0: off; None: recsys tune's default)
    pick_margin: float = Field(2.0, ge=0)  # recsys tune --pick-margin: standard errors the pick must beat the best baseline by

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str] | None) -> list[str] | None:
        searchable = spaces(16)
        for m in methods or []:
            try:
                sweep_method(m)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
            if m not in searchable:
                raise ValueError(f"no search space for '{m}'; searchable: {', '.join(searchable)}")
        if methods is not None and not methods:
            raise ValueError("an empty list searches nothing; leave 'methods' out for recsys tune's default")
        return methods

    @field_validator("confirm_folds")
    @classmethod
    def _folds(cls, folds: int | None) -> int | None:
        if folds == 1:
            raise ValueError("1 fold is no cross-validation: 0 (off) or at least 2")
        return folds

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets: list[float] | None) -> list[float] | None:
        for b in budgets or []:
            if not b > 1:
                raise ValueError(f"budget {b:g} must be a compression ratio above 1 (full bytes / budget)")
        return budgets


@dataclass(frozen=True)
class Pick:
    """A search's outcome at one budget: its folder and best trial (method, options, validation AUC)."""

    budget: float
    folder: Path
    trial: str
    method: str
    options: dict[str, Any]
    valid_auc: float
    trials: dict[str, int]  # trials by status: ok, stopped, failed

    @property
    def best_yaml(self) -> Path:
        return self.folder / "best.yaml"

    def describe(self) -> str:
        opts = ", ".join(f"{k.removeprefix('embedding.options.').removeprefix('training.')}={v}" for k, v in self.options.items())
        return f"{self.method}" + (f" ({opts})" if opts else " (defaults)")


def tune_settings(tune: SuiteTune, sweep: SweepSettings, budget: float) -> TuneSettings:
    """The search of one dataset (``sweep``: its sweep's settings) at ``budget``."""
    return TuneSettings(
        dataset=Path(sweep.dataset),
        budget=budget,
        methods=tune.methods,
        trials=tune.trials,
        model=sweep.model,
        quick=sweep.quick,
        out=Path(sweep.out) / "tune" / f"{budget:g}x",
        seed=tune.seed,
        config=sweep.config,
        sets=list(sweep.sets),
        concurrency=tune.concurrency,
        grace_epochs=tune.grace_epochs,
        search_rows=tune.search_rows,
        confirm_seeds=tune.confirm_seeds,
        confirm_folds=tune.confirm_folds,
        pick_margin=tune.pick_margin,
        drop_infeasible=True,
        tracking_uri=sweep.tracking_uri,
        experiment=f"{sweep.experiment}-tune",
    )


def read_pick(folder: Path, budget: float) -> Pick | None:
    """The pick a finished search wrote (``best.json``); None if it has not written one."""
    best = read_json(folder / "best.json")
    if best is None or not (folder / "best.yaml").exists():
        return None
    return Pick(budget, folder, best["trial"], best["method"], best["options"], best["valid_auc"], best["trials"])


def tune_dataset(tune: SuiteTune, sweep: SweepSettings, label: str, report_only: bool = False) -> list[Pick]:
    """Each budget's search (run, resumed, or read back when finished with the same plan); the picks.
    ``report_only``: nothing is run, the picks already written are read."""
    picks = []
    for budget in tune.budgets or sweep.budgets:
        settings = tune_settings(tune, sweep, budget)
        folder = Path(settings.out).resolve()
        pick = read_pick(folder, budget)
        if not report_only and (pick is None or not same_plan(read_json(folder / "tune.json"), planned_search(settings))):
            print(f"=== {label}: recsys tune at {budget:g}x, {tune.trials} trials", flush=True)
            run_search(settings)
            pick = read_pick(folder, budget)
        if pick is not None:
            picks.append(pick)
        elif not report_only:
            print(f"{label}: no trial of the {budget:g}x search finished; no tuned point", flush=True)
    return picks
