"""Run one experiment in this process: data → method → model → phases → test → files/MLflow.

``train_experiment`` checks the dataset, prepares the run folder (an earlier run's outputs are
removed unless ``resume``) and opens the tracked run (both in ``recsys.training.session``),
and runs the method's phases (``recsys.training.phases.run_phases``) on an ``Experiment``
(``recsys.training.experiment``). With ``training.workers > 1`` it hands the run to
``recsys.training.ray_trainer``, whose workers run the same phase runner with Ray Data readers and
a ``Checkpointer`` (the phase in progress resumes from its last checkpoint).

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["embedding.method=hash"])  # doctest: +SKIP
    >>> metrics = train_experiment(cfg, Path("runs/hash"))                       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.config import ExperimentConfig
from recsys.features import load_dataset_spec
from recsys.storage import StoragePath, location
from recsys.training.distributed import process_group
from recsys.training.experiment import EpochHook, Experiment
from recsys.training.phases import run_phases
from recsys.training.session import open_run_folder, tracking_session


def train_experiment(
    cfg: ExperimentConfig, out_dir: str | Path | StoragePath, resume: bool = False, epoch_hook: EpochHook | None = None
) -> dict[str, Any]:
    """Train, evaluate and record one experiment; returns what ``metrics.json`` holds.

    ``out_dir`` is a folder or a URI (``recsys.storage``); the dataset may be either too.
    ``epoch_hook`` (in-process runs only) is called after every epoch of every phase."""
    if cfg.training.workers > 1:
        from recsys.training.ray_trainer import train_distributed

        return train_distributed(cfg, out_dir, resume)
    out = location(out_dir)
    load_dataset_spec(cfg.data.path)  # a missing dataset fails before a folder or an MLflow run exists
    with process_group():
        open_run_folder(out, resume)
        with tracking_session(cfg, out) as session:
            exp = Experiment(cfg, out, session.tracker)
            exp.epoch_hook = epoch_hook
            metrics = run_phases(exp, resume)
            session.finish(metrics)
            return metrics
