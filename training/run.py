"""Run one experiment in this process: data → method → model → phases → test → files/MLflow.

A method's phases (``method.phases()``; one ``train`` phase for most methods) run in order.
Each phase builds the method and model afresh from the config, loads its starting weights
(the previous phase's best, or the run's initial weights for a rewind), restores the
decisions of earlier phases (``phase_state``), then trains or searches. A finished phase
leaves ``<out>/phases/<name>/`` with ``weights.safetensors``, ``state.safetensors`` and
``summary.json``; with ``resume=True`` finished phases are skipped.

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["embedding.method=hash"])  # doctest: +SKIP
    >>> metrics = train_experiment(cfg, Path("runs/hash"))                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from recsys.config import ExperimentConfig, flatten
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.embeddings import EmbeddingMethod, MethodContext, Phase, build_method
from recsys.features import load_dataset_spec
from recsys.models import build_model
from recsys.models.train import TrainModel
from training.checkpoint import load_weights, save_weights
from training.distributed import ShardedModel, ensure_process_group, shard
from training.loop import FitResult, Trainer
from training.plots import learning_curve
from training.tracking import Tracker, make_tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Experiment:
    """The pieces of one run that every phase rebuilds from the config."""

    def __init__(self, cfg: ExperimentConfig, out_dir: Path, tracker: Tracker) -> None:
        self.cfg = cfg
        self.out = out_dir
        self.tracker = tracker
        self.spec = load_dataset_spec(cfg.data.path)
        e = cfg.embedding
        self.ctx = MethodContext.from_spec(self.spec, cfg.model.embedding_dim, e.compression, e.budget_bytes)

    def build(self, phase: Phase | None) -> tuple[EmbeddingMethod, ShardedModel]:
        """Seeded method + model (identical initial weights every time), entered into ``phase``, sharded."""
        seed_everything(self.cfg.training.seed)
        method = build_method(self.cfg.embedding.method, self.ctx, self.cfg.embedding.options)
        if phase is not None:
            method.enter_phase(phase)
        model = TrainModel(build_model(self.cfg.model, method, len(self.spec.dense_fields)))
        return method, shard(model, method, self.cfg.training)

    def reader(self, split: str, method: EmbeddingMethod, max_rows: int | None = None) -> ParquetBatchReader:
        t, d = self.cfg.training, self.cfg.data
        layout = BatchLayout.from_spec(self.spec, method.id_scheme)
        if split == "train":
            return ParquetBatchReader(d.path, split, layout, t.batch_size, shuffle=True, seed=t.seed, max_rows=d.max_train_rows)
        rows = min(x for x in (max_rows, d.max_eval_rows) if x is not None) if (max_rows or d.max_eval_rows) else None
        return ParquetBatchReader(d.path, split, layout, t.eval_batch_size, max_rows=rows)

    def trainer(self, method: EmbeddingMethod, sharded: ShardedModel, phase: Phase, eval_rows: int | None = None) -> Trainer:
        prefix = "" if phase.name == "train" else f"{phase.name}/"
        cfg = self.cfg.training if phase.epochs is None else self.cfg.training.model_copy(update={"epochs": phase.epochs})
        log = self.tracker.log_metrics
        return Trainer(
            sharded, method, self.reader("train", method), self.reader("valid", method, eval_rows), cfg,
            on_step=lambda step, loss, rate: log({f"{prefix}train_loss": loss, f"{prefix}train_samples_per_s": rate}, step),
            on_epoch=lambda e: log({f"{prefix}valid_auc": e.valid.auc, f"{prefix}valid_logloss": e.valid.logloss, f"{prefix}epoch_train_loss": e.train_loss}, e.epoch),
        )


def _phase_dir(out: Path, phase: Phase) -> Path:
    return out / "phases" / phase.name


def _run_phase(exp: Experiment, phase: Phase, previous: Path | None) -> tuple[EmbeddingMethod, Trainer, dict[str, Any]]:
    method, sharded = exp.build(phase)
    start = exp.out / "initial.safetensors" if phase.weights == "initial" or previous is None else previous / "weights.safetensors"
    if not start.exists():
        save_weights(sharded.module, start)
    load_weights(sharded.module, start)
    if previous is not None:
        method.load_phase_state(load_file(str(previous / "state.safetensors")))
    folder = _phase_dir(exp.out, phase)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = exp.trainer(method, sharded, phase, phase.eval_rows)
    summary: dict[str, Any] = {"phase": asdict(phase)}
    if phase.kind == "train":
        result = trainer.fit(folder / "weights.safetensors")
        summary.update(fit=_fit_summary(result))
        learning_curve(result, folder / "learning_curve.png", f"{exp.cfg.model.name} / {exp.cfg.embedding.method}: {phase.name}", _oracle(exp, "valid"))
    else:
        summary.update(search=method.search(lambda: trainer.evaluate(trainer.valid_reader).auc))
        save_weights(sharded.module, folder / "weights.safetensors")
    summary["memory_bytes"] = method.memory_bytes()
    save_file({k: v.contiguous() for k, v in method.phase_state().items()}, str(folder / "state.safetensors"))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return method, trainer, summary


def _restore(exp: Experiment, phase: Phase, folder: Path | None) -> tuple[EmbeddingMethod, Trainer]:
    """Method and trainer of a finished phase, for evaluating a run whose phases all finished."""
    assert folder is not None
    method, sharded = exp.build(phase)
    load_weights(sharded.module, folder / "weights.safetensors")
    method.load_phase_state(load_file(str(folder / "state.safetensors")))
    return method, exp.trainer(method, sharded, phase)


def _fit_summary(result: FitResult) -> dict[str, Any]:
    best = result.best
    return {
        "epochs": len(result.epochs), "best_epoch": best.epoch, "valid_auc": best.valid.auc,
        "valid_logloss": best.valid.logloss, "train_samples_per_s": result.train_samples_per_s,
        "stopped_early": result.stopped_early,
    }


def _oracle(exp: Experiment, split: str) -> float | None:
    oracle = exp.spec.splits[split].oracle
    return oracle.auc if oracle else None


def train_experiment(cfg: ExperimentConfig, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and record one experiment; returns what ``metrics.json`` holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started_group = ensure_process_group()
    tracker = make_tracker(cfg.tracking, tags={"method": cfg.embedding.method, "model": cfg.model.name})
    status = "FAILED"
    try:
        exp = Experiment(cfg, out_dir, tracker)
        tracker.log_params(flatten(cfg))
        metrics = _run_phases(exp, resume)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        top = [out_dir / name for name in ("metrics.json", "config.yaml", "learning_curve.png") if (out_dir / name).exists()]
        for path in [*top, *sorted(out_dir.glob("phases/*/*.png")), *sorted(out_dir.glob("phases/*/summary.json"))]:
            tracker.log_artifact(path, None if path.parent == out_dir else f"phases/{path.parent.name}")
        status = "FINISHED"
        return metrics
    finally:
        tracker.close(status)
        if started_group:
            dist.destroy_process_group()


def _run_phases(exp: Experiment, resume: bool) -> dict[str, Any]:
    phases = build_method(exp.cfg.embedding.method, exp.ctx, exp.cfg.embedding.options).phases()
    previous: Path | None = None
    summaries: dict[str, dict[str, Any]] = {}
    last: tuple[EmbeddingMethod, Trainer] | None = None
    for i, phase in enumerate(phases):
        folder = _phase_dir(exp.out, phase)
        done = (folder / "summary.json").exists() and (folder / "state.safetensors").exists()
        if resume and done:
            print(f"phase '{phase.name}' already finished in {folder}; skipping it")
            summaries[phase.name] = json.loads((folder / "summary.json").read_text())
            previous = folder
            continue
        method, trainer, summaries[phase.name] = _run_phase(exp, phase, previous)
        previous, last = folder, (method, trainer)
    method, trainer = last if last is not None else _restore(exp, phases[-1], previous)
    test = trainer.evaluate(exp.reader("test", method))
    fits = [s["fit"] for s in summaries.values() if "fit" in s]
    method_bytes = method.memory_bytes()
    metrics: dict[str, Any] = {
        "test_auc": test.auc,
        "test_logloss": test.logloss,
        "valid_auc": fits[-1]["valid_auc"] if fits else float("nan"),
        "valid_logloss": fits[-1]["valid_logloss"] if fits else float("nan"),
        "embedding_bytes": method_bytes,
        "full_embedding_bytes": exp.ctx.full_bytes,
        "compression_ratio": exp.ctx.full_bytes / max(method_bytes, 1),
        "train_samples_per_s": fits[-1]["train_samples_per_s"] if fits else 0.0,
        "epochs": sum(f["epochs"] for f in fits),
        "best_epoch": fits[-1]["best_epoch"] if fits else -1,
        "stopped_early": any(f["stopped_early"] for f in fits),
    }
    test_oracle = exp.spec.splits["test"].oracle
    if test_oracle is not None:
        metrics["oracle_test_auc"] = test_oracle.auc
        metrics["oracle_test_logloss"] = test_oracle.logloss
    if len(phases) > 1:
        metrics["phases"] = {name: {k: v for k, v in s.items() if k != "phase"} for name, s in summaries.items()}
    plot = _phase_dir(exp.out, phases[-1]) / "learning_curve.png"
    if plot.exists():
        (exp.out / "learning_curve.png").write_bytes(plot.read_bytes())
    return metrics
