"""``recsys tune --confirm-folds K``: the pick's comparison on K folds of train ∪ valid.

On a small set one validation split is too few rows to tell the leader from the best baseline
(1,050 rows on the Avazu 10k sample: a standard error near 0.01 on their AUC difference), and the
leader was chosen on those same rows. With folds, both are retrained on each of the K
cross-validation datasets of ``recsys.data.folds`` (the train and valid rows a trial reads, after
``search_rows``, ``--quick`` and ``--set data.max_*_rows``, split K ways at the search's seed; fold ``i`` trained at seed ``seed + 1 + i``)
and the pick compares them on every held-out part: K times the rows, and rows the leader was not
chosen on except for the original valid split's share. ``recsys.training.tune.pick`` averages
the paired differences over the folds, each resampled on its own rows.

Example:
    >>> fold_runs(3, per_fold=2, seed=0)
    [(0, 1), (0, 4), (1, 2), (1, 5), (2, 3), (2, 6)]
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.config import ExperimentConfig
from recsys.data.folds import write_folds
from recsys.runfolder import RunFolder
from recsys.storage import is_uri, load_tensors
from recsys.training.jsonfile import read_json, write_json
from recsys.training.tune.report import TrialResult

FOLDS_DIR = "folds"  # DIR/folds/fold<i>: the datasets; DIR/confirm/<trial>/fold<i>: the runs


def fold_runs(k: int, per_fold: int, seed: int) -> list[tuple[int, int]]:
    """The (fold, training seed) of each run, fold by fold: fresh seeds (the trials trained at
    ``seed``), a different one for every run."""
    return [(i, seed + 1 + i + k * j) for i in range(k) for j in range(per_fold)]


def _run_folder(out: Path, trial: str, fold: int, seed: int) -> Path:
    return Path(out) / "confirm" / trial / f"fold{fold}-seed{seed}"


def confirm_on_folds(out: Path, k: int, per_fold: int, seed: int, configs: dict[str, Callable[[int], ExperimentConfig]]) -> None:
    """Train each trial of ``configs`` (trial name → its config at a seed; all on one dataset) on
    each fold at ``per_fold`` seeds, with the fold as its dataset (every row of it); runs done
    before for the same config are read back."""
    from recsys.training.run import train_experiment

    data = next(iter(configs.values()))(seed).data
    if is_uri(data.path):
        raise ValueError(f"confirm_folds: the dataset {data.path} is not a local folder; folds are written beside the search (copy it locally first)")
    folds = write_folds(Path(data.path), k, seed, Path(out) / FOLDS_DIR, data.max_train_rows, data.max_eval_rows)
    for trial, config in configs.items():
        for i, fold_seed in fold_runs(k, per_fold, seed):
            base = config(fold_seed)
            whole = {"path": str(folds[i]), "max_train_rows": None, "max_eval_rows": None}
            cfg = base.model_copy(update={"data": base.data.model_copy(update=whole)})
            folder, dump = _run_folder(out, trial, i, fold_seed), cfg.model_dump(mode="json")
            record = read_json(folder / "confirm.json")
            if record is not None and record.get("config") == dump and RunFolder(folder).valid_scores.exists():
                continue
            shutil.rmtree(folder, ignore_errors=True)
            print(f"recsys tune: confirming {trial} on fold {i + 1} of {k} at seed {fold_seed}", flush=True)
            folder.mkdir(parents=True)
            train_experiment(cfg, folder)
            write_json(folder / "confirm.json", {"trial": trial, "fold": i, "seed": fold_seed, "config": dump})


def fold_scores(out: Path, k: int, per_fold: int, seed: int, result: TrialResult) -> list[tuple[Any, Any]]:
    """A trial's validation labels and probabilities of each run on the folds, in ``fold_runs``
    order (stops at the first missing one)."""
    scores = []
    for i, fold_seed in fold_runs(k, per_fold, seed):
        loc = RunFolder(_run_folder(out, result.trial, i, fold_seed)).valid_scores
        if not loc.exists():
            break
        t = load_tensors(loc)
        scores.append((t["labels"].numpy(), t["probs"].numpy().astype("float64")))
    return scores
