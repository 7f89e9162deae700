"""The layout of a run folder (``recsys train --out``), known here and nowhere else.

::

    config.yaml              the validated experiment config (written at the end)
    metrics.json             what ``train_experiment`` returns
    diagnostics.json         the method's diagnostics (OptEmbed dims, DSL density, collisions)
    learning_curve.png       the last phase's figure
    test_scores.safetensors  the test rows' labels and predicted probabilities
    valid_scores.safetensors the same for the validation rows the run's valid AUC is measured on
    initial.safetensors      the run's initial weights (a rewinding phase starts from them)
    phases/<phase>/          weights.safetensors, state.safetensors, summary.json, learning_curve.png
    export/                  the fp32 artifact a registered model was exported to
    ray/ progress.jsonl workers/ worker_metrics.json     the Ray path's files

A phase is finished when its ``summary.json`` and ``state.safetensors`` exist. The checkpoint
of a run (what ``recsys export`` reads, and what MLflow holds for ``recsys export --run RUN_ID``)
is ``config.yaml`` and each phase's ``weights.safetensors`` and ``state.safetensors``.

Example:
    >>> run = RunFolder(Path("runs/hash"))                           # doctest: +SKIP
    >>> run.phase("train").weights                                   # doctest: +SKIP
    PosixPath('runs/hash/phases/train/weights.safetensors')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from recsys.config import ExperimentConfig
from recsys.storage import Location, load_tensors, location, remove

CONFIG = "config.yaml"
METRICS = "metrics.json"
DIAGNOSTICS = "diagnostics.json"
LEARNING_CURVE = "learning_curve.png"
INITIAL = "initial.safetensors"
PHASES = "phases"
EXPORT = "export"
WEIGHTS = "weights.safetensors"
STATE = "state.safetensors"
SUMMARY = "summary.json"
TEST_SCORES = "test_scores.safetensors"  # the test rows' labels and predicted probabilities (the bench's bootstrap CIs)
VALID_SCORES = "valid_scores.safetensors"  # the same for the validation rows (recsys tune's paired pick)
CHECKPOINT_FILES = (WEIGHTS, STATE)  # per phase
OUTPUTS = (PHASES, INITIAL, METRICS, DIAGNOSTICS, LEARNING_CURVE, TEST_SCORES, VALID_SCORES)  # what a run writes while training
RAY_STORAGE = "ray"  # Ray Train's storage_path (its checkpoints)
PROGRESS = "progress.jsonl"  # starts, resumes and checkpoints of a Ray run
WORKER_METRICS = "worker_metrics.json"  # rank 0's metrics, read by the driver
WORKERS = "workers"  # rank-<r>.json: pid, host and Ray node of each rank's process
RAY_OUTPUTS = (RAY_STORAGE, PROGRESS, WORKER_METRICS, WORKERS)  # the Ray path's own files
TOP_ARTIFACTS = (METRICS, CONFIG, LEARNING_CURVE, DIAGNOSTICS)  # logged to MLflow at the run's root


@dataclass(frozen=True)
class PhaseFolder:
    """``phases/<name>/`` of a run folder."""

    root: Location

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def weights(self) -> Location:
        return self.root / WEIGHTS

    @property
    def state(self) -> Location:
        return self.root / STATE

    @property
    def summary(self) -> Location:
        return self.root / SUMMARY

    @property
    def learning_curve(self) -> Location:
        return self.root / LEARNING_CURVE

    def finished(self) -> bool:
        return self.summary.exists() and self.state.exists()

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text())


@dataclass(frozen=True)
class RunFolder:
    """A run folder, local or on object storage (``recsys.storage``)."""

    root: Location

    @classmethod
    def at(cls, path: str | Path | Location) -> RunFolder:
        return cls(location(path))

    @property
    def config(self) -> Location:
        return self.root / CONFIG

    @property
    def metrics(self) -> Location:
        return self.root / METRICS

    @property
    def diagnostics(self) -> Location:
        return self.root / DIAGNOSTICS

    @property
    def learning_curve(self) -> Location:
        return self.root / LEARNING_CURVE

    @property
    def initial(self) -> Location:
        return self.root / INITIAL

    @property
    def test_scores(self) -> Location:
        return self.root / TEST_SCORES

    @property
    def valid_scores(self) -> Location:
        return self.root / VALID_SCORES

    @property
    def export(self) -> Location:
        return self.root / EXPORT

    def phase(self, name: str) -> PhaseFolder:
        return PhaseFolder(self.root / PHASES / name)

    def local_phases(self) -> list[PhaseFolder]:
        """The phase folders present (a local run folder), by name."""
        root = Path(self.root) / PHASES
        return [PhaseFolder(p) for p in sorted(root.glob("*")) if p.is_dir()]

    def clear(self, extra: tuple[str, ...] = ()) -> None:
        """Remove what an earlier run left (its weights would otherwise seed this run) and ``extra``."""
        for name in (*OUTPUTS, *extra):
            remove(self.root / name)

    def read_config(self) -> ExperimentConfig:
        """The run's ``config.yaml``; a folder without one is not a finished run folder."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.root}: no {CONFIG}; is this a finished run folder (`recsys train --out`)?")
        return ExperimentConfig.model_validate(yaml.safe_load(self.config.read_text()))

    def write_config(self, cfg: ExperimentConfig) -> None:
        self.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def read_scores(self, split: str = "valid") -> tuple[np.ndarray, np.ndarray] | None:
        """The labels and probabilities (float64) the run saved for ``split`` (valid or test), or
        None when it saved none."""
        loc = {"valid": self.valid_scores, "test": self.test_scores}[split]
        if not loc.exists():
            return None
        t = load_tensors(loc)
        return t["labels"].numpy(), t["probs"].numpy().astype(np.float64)

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json``, or None when the run has not finished."""
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else None

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.metrics.write_text(json.dumps(metrics, indent=2) + "\n")

    def artifacts(self, checkpoint: bool) -> list[tuple[Path, str | None]]:
        """``(file, MLflow artifact folder)`` of what a finished local run folder logs: the top files,
        each phase's figures and summary and, with ``checkpoint``, its weights and state."""
        root = Path(self.root)
        top = [(root / name, None) for name in TOP_ARTIFACTS if (root / name).exists()]
        files = [*sorted(root.glob(f"{PHASES}/*/*.png")), *sorted(root.glob(f"{PHASES}/*/{SUMMARY}"))]
        if checkpoint:
            files += [p for name in CHECKPOINT_FILES for p in sorted(root.glob(f"{PHASES}/*/{name}"))]
        return top + [(p, f"{PHASES}/{p.parent.name}") for p in files]

    def checkpoint_files(self) -> list[str]:
        """Relative paths of the checkpoint a local run folder holds (``config.yaml`` and ``metrics.json``
        when present, then each phase's weights and state), the files ``log_checkpoint`` logs."""
        root = Path(self.root)
        names = [name for name in (CONFIG, METRICS) if (root / name).is_file()]
        for phase in self.local_phases():
            names += [f"{PHASES}/{phase.name}/{n}" for n in CHECKPOINT_FILES if (Path(phase.root) / n).is_file()]
        return names
