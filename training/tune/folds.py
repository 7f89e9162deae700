"""``recsys tune --confirm-folds K``: the pick's comparison on K folds of train ∪ valid.

On a small set one validation split is too few rows to tell the leader from the best baseline
(1,050 rows on the Avazu 10k sample: a standard error near 0.01 on their AUC difference), and the
leader was chosen on those same rows. With folds, each method's best trial is retrained on each
of the K cross-validation datasets of ``recsys.data.folds`` (the train and valid rows a trial
reads, after ``search_rows``, ``--quick`` and ``--set data.max_*_rows``, split K ways at the
search's seed), at ``--confirm-seeds`` fresh seeds per fold (``fold_runs``), and the pick
(``recsys.training.tune.pick.choose_by_folds``) ranks them on the held-out parts and compares the
best with the best baseline there: K times the rows, and rows the leaders were not chosen on
except for the original valid split's share. The paired differences are averaged over the runs,
each fold resampled on its own rows.

Example:
    >>> fold_runs(3, per_fold=2, seed=0)
    [(0, 1), (0, 4), (1, 2), (1, 5), (2, 3), (2, 6)]
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.config import ExperimentConfig
from recsys.data.folds import write_folds
from recsys.runfolder import RunFolder
from recsys.storage import is_uri
from recsys.training.jsonfile import read_json, write_json
from recsys.training.tune.report import TrialResult

FAILED = "failed.json"  # a run on a fold that failed, with its config and error (not retried for the same config)
FOLDS_DIR = "folds"  # DIR/folds/fold<i>: the datasets; DIR/confirm/<trial>/fold<i>-seed<s>: the runs


def fold_runs(k: int, per_fold: int, seed: int) -> list[tuple[int, int]]:
    """The (fold, training seed) of each run, fold by fold: fresh seeds (the trials trained at
    ``seed``), a different one for every run."""
    return [(i, seed + 1 + i + k * j) for i in range(k) for j in range(per_fold)]


def _run_folder(out: Path, trial: str, fold: int, seed: int) -> Path:
    return Path(out) / "confirm" / trial / f"fold{fold}-seed{seed}"


def confirm_on_folds(
    out: Path,
    k: int,
    per_fold: int,
    seed: int,
    configs: dict[str, Callable[[int], ExperimentConfig]],
    address: str | None = None,
    concurrency: int | None = None,
) -> list[str]:
    """Train each trial of ``configs`` (trial name → its config at a seed; all on one dataset) on
    each fold at ``per_fold`` seeds, with the fold as its dataset (every row of it): one Ray task
    of one CPU per run, on the local Ray (``concurrency`` CPUs) or the cluster at ``address``
    (``out`` must then be shared storage, as the trials' folders are). Runs done before for the
    same config are read back; returns a line per run that failed (``_run_jobs``)."""
    data = next(iter(configs.values()))(seed).data
    if is_uri(data.path):
        raise ValueError(f"confirm_folds: the dataset {data.path} is not a local folder; folds are written beside the search (copy it locally first)")
    folds = write_folds(Path(data.path), k, seed, Path(out) / FOLDS_DIR, data.max_train_rows, data.max_eval_rows)
    jobs, known = [], []
    for trial, config in configs.items():
        for i, fold_seed in fold_runs(k, per_fold, seed):
            base = config(fold_seed)
            whole = {"path": str(folds[i]), "max_train_rows": None, "max_eval_rows": None}
            cfg = base.model_copy(update={"data": base.data.model_copy(update=whole)})
            folder, dump = _run_folder(out, trial, i, fold_seed), cfg.model_dump(mode="json")
            record, failed = read_json(folder / "confirm.json"), read_json(folder / FAILED)
            if failed is not None and failed.get("config") == dump:
                known.append(f"{trial} on fold {i + 1} at seed {fold_seed}: {failed['error']}")  # not retried for the same config
            elif record is None or record.get("config") != dump or not RunFolder(folder).valid_scores.exists():
                jobs.append((str(folder), {"trial": trial, "fold": i, "seed": fold_seed, "config": dump}))
    return known + (_run_jobs(jobs, address, concurrency) if jobs else [])


def _run_jobs(jobs: list[tuple[str, dict[str, Any]]], address: str | None, concurrency: int | None) -> list[str]:
    """Run the jobs as Ray tasks; returns a line per run that failed (its trial is then left out
    of the pick: a stopped trial's options may fail only past the epochs it was stopped at, as an
    OptEmbed search over the budget does)."""
    import ray

    from recsys.training.ray_trainer import init_ray

    print(f"recsys tune: {len(jobs)} runs on the folds", flush=True)
    started = init_ray(address, concurrency)
    failed: dict[str, str] = {}  # by folder: returned in the jobs' order, not the order they ended in
    try:
        task = ray.remote(num_cpus=1)(train_fold_run)
        refs = [(task.remote(folder, record), folder, record) for folder, record in jobs]
        pending, record_folder = {ref: record for ref, _, record in refs}, {ref: folder for ref, folder, _ in refs}
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            record = pending.pop(ready[0])
            where = f"{record['trial']} on fold {record['fold'] + 1} at seed {record['seed']}"
            done += 1
            try:
                ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                error = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                Path(record_folder[ready[0]]).mkdir(parents=True, exist_ok=True)
                write_json(Path(record_folder[ready[0]]) / FAILED, record | {"error": error})
                failed[record_folder[ready[0]]] = f"{where}: {error}"
                print(f"recsys tune: failed {where}: {error} ({done}/{len(jobs)}); left out of the pick", file=sys.stderr, flush=True)
                continue
            print(f"recsys tune: confirmed {where} ({done}/{len(jobs)})", flush=True)
    finally:
        if started:
            ray.shutdown()
    return [failed[folder] for folder, _ in jobs if folder in failed]


def train_fold_run(folder: str, record: dict[str, Any]) -> None:
    """One run on a fold (a Ray task): train ``record['config']`` in ``folder``, then record it."""
    import torch

    from recsys.training.run import train_experiment

    torch.set_num_threads(1)
    path = Path(folder)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    train_experiment(ExperimentConfig.model_validate(record["config"]), path)
    write_json(path / "confirm.json", record)


def fold_scores(out: Path, k: int, per_fold: int, seed: int, result: TrialResult) -> list[tuple[Any, Any]]:
    """A trial's validation labels and probabilities of each run on the folds, in ``fold_runs``
    order (stops at the first missing one)."""
    scores = []
    for i, fold_seed in fold_runs(k, per_fold, seed):
        folder = _run_folder(out, result.trial, i, fold_seed)
        run = RunFolder(folder).read_scores() if (folder / "confirm.json").exists() else None  # recorded only when the run finished
        if run is None:
            break
        scores.append(run)
    return scores
