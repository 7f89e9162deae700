"""Run one experiment in this process: data → method → model → phases → test → files/MLflow.

A method's phases (``method.phases()``; one ``train`` phase for most methods) run in order.
Each phase builds the method and model afresh from the config, loads its starting weights
(the previous phase's best, or the run's initial weights for a rewind), restores the
decisions of earlier phases (``phase_state``), then trains or searches. A finished phase
leaves ``<out>/phases/<name>/`` with ``weights.safetensors``, ``state.safetensors`` and
``summary.json``; with ``resume=True`` finished phases are skipped.

With ``training.workers > 1`` ``train_experiment`` hands the run to ``recsys.training.ray_trainer``,
whose workers run the same ``Experiment`` and phases with Ray Data readers and a
``Checkpointer`` (the phase in progress resumes from its last checkpoint). With several ranks,
files are written by rank 0 and phase decisions are broadcast from it.

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["embedding.method=hash"])  # doctest: +SKIP
    >>> metrics = train_experiment(cfg, Path("runs/hash"))                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import yaml

from recsys.config import ExperimentConfig, flatten
from recsys.data.batch import BatchLayout, ParquetBatchReader, prepared
from recsys.data.prefetch import Prefetched
from recsys.data.vocab import read_value_counts
from recsys.embeddings import EmbeddingMethod, MethodContext, Phase, build_method, method_spec
from recsys.embeddings.auto import AutoEmbedding, choose
from recsys.export.mlflow_run import CHECKPOINT_FILES
from recsys.features import load_dataset_spec
from recsys.metrics import auc, logloss
from recsys.models import build_model
from recsys.models.train import TrainModel
from recsys.storage import Location, StoragePath, download_tree, load_tensors, location, read_parquet, remove, save_tensors
from recsys.training.checkpoint import load_weights, save_weights
from recsys.training.collectives import (
    barrier,
    broadcast_tensors,
    is_main,
    replicated_mismatches,
    world,
)
from recsys.training.distributed import ShardedModel, ensure_process_group, shard
from recsys.training.loop import EpochResult, EvalResult, FitResult, LoopState, Reader, Trainer
from recsys.training.plots import learning_curve
from recsys.training.tracking import Tracker, make_tracker, start_system_metrics

EpochHook = Callable[[str, int, float], None]  # (phase, epoch, valid AUC)
ReaderFactory = Callable[[str, BatchLayout, int | None], Reader]  # (split, layout, max rows)


class Checkpointer(Protocol):
    """Mid-phase checkpoints of a train phase (the Ray path; none in-process)."""

    def restore(self, phase: Phase, sharded: ShardedModel) -> LoopState | None: ...
    def save(self, phase: Phase, sharded: ShardedModel, state: LoopState) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Experiment:
    """The pieces of one run that every phase rebuilds from the config."""

    def __init__(
        self, cfg: ExperimentConfig, out_dir: Location, tracker: Tracker, readers: ReaderFactory | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = out_dir
        self.tracker = tracker
        self.readers = readers
        self.checkpointer = checkpointer
        self.step_hook: Callable[[str, int], None] | None = None  # (phase, step) at every logged step
        self.epoch_hook: EpochHook | None = None  # (phase, epoch, valid AUC) after every epoch (``recsys tune``)
        self.spec = load_dataset_spec(cfg.data.path)
        e = cfg.embedding
        self.ctx = MethodContext.from_spec(self.spec, cfg.model.embedding_dim, e.compression, e.budget_bytes)
        if method_spec(e.method, e.options).uses_value_counts:
            self.ctx = self.ctx.with_value_counts(read_value_counts(self.spec, cfg.data.path))

    def phases(self) -> list[Phase]:
        return build_method(self.cfg.embedding.method, self.ctx, self.cfg.embedding.options).phases()

    def build(self, phase: Phase | None) -> tuple[EmbeddingMethod, ShardedModel]:
        """Seeded method + model (identical initial weights every time), entered into ``phase``, sharded."""
        seed_everything(self.cfg.training.seed)
        method = build_method(self.cfg.embedding.method, self.ctx, self.cfg.embedding.options)
        if phase is not None:
            method.enter_phase(phase)
        model = TrainModel(build_model(self.cfg.model, method, len(self.spec.dense_fields)))
        return method, shard(model, method, self.cfg.training)

    def reader(self, split: str, method: EmbeddingMethod, max_rows: int | None = None) -> Reader:
        """Batches of ``split`` for ``method``, read and ``prepare``d on a background thread."""
        t, d = self.cfg.training, self.cfg.data
        layout = BatchLayout.from_spec(self.spec, method.id_scheme)
        rows = row_limit(self.cfg, split, max_rows)
        if self.readers is not None:
            source = self.readers(split, layout, rows)
        elif split == "train":
            source = ParquetBatchReader(d.path, split, layout, t.batch_size, shuffle=True, seed=t.seed, max_rows=rows)
        else:
            source = ParquetBatchReader(d.path, split, layout, t.eval_batch_size, max_rows=rows)
        return Prefetched(source, partial(prepared, method))

    def _epoch_done(self, phase: Phase, e: EpochResult) -> None:
        prefix = "" if phase.name == "train" else f"{phase.name}/"
        self.tracker.log_metrics({f"{prefix}valid_auc": e.valid.auc, f"{prefix}valid_logloss": e.valid.logloss,
                                  f"{prefix}epoch_train_loss": e.train_loss}, e.epoch)
        if self.epoch_hook is not None:
            self.epoch_hook(phase.name, e.epoch, e.valid.auc)

    def trainer(self, method: EmbeddingMethod, sharded: ShardedModel, phase: Phase, eval_rows: int | None = None) -> Trainer:
        prefix = "" if phase.name == "train" else f"{phase.name}/"
        cfg = self.cfg.training if phase.epochs is None else self.cfg.training.model_copy(update={"epochs": phase.epochs})
        log = self.tracker.log_metrics

        def on_step(step: int, loss: float, rate: float) -> None:
            log({f"{prefix}train_loss": loss, f"{prefix}train_samples_per_s": rate}, step)
            if self.step_hook is not None:
                self.step_hook(phase.name, step)

        return Trainer(
            sharded, method, self.reader("train", method), self.reader("valid", method, eval_rows), cfg,
            on_step=on_step,
            on_epoch=lambda e: self._epoch_done(phase, e),
        )


def row_limit(cfg: ExperimentConfig, split: str, max_rows: int | None = None) -> int | None:
    """Rows of ``split`` a reader uses: ``data.max_*_rows`` and a phase's ``eval_rows``."""
    if split == "train":
        return cfg.data.max_train_rows
    limits = [x for x in (max_rows, cfg.data.max_eval_rows) if x is not None]
    return min(limits) if limits else None


def _phase_dir(out: Location, phase: Phase) -> Location:
    return out / "phases" / phase.name


def _run_phase(exp: Experiment, phase: Phase, previous: Location | None) -> tuple[EmbeddingMethod, Trainer, dict[str, Any]]:
    method, sharded = exp.build(phase)
    start = exp.out / "initial.safetensors" if phase.weights == "initial" or previous is None else previous / "weights.safetensors"
    exists = start.exists()
    barrier()  # every rank decides before rank 0 writes
    if not exists:
        save_weights(sharded.module, start)
    load_weights(sharded.module, start)
    if previous is not None:
        method.load_phase_state(load_tensors(previous / "state.safetensors"))
    folder = _phase_dir(exp.out, phase)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = exp.trainer(method, sharded, phase, phase.eval_rows)
    summary: dict[str, Any] = {"phase": asdict(phase)}
    mismatches: set[str] = set()
    log_epoch = trainer.on_epoch

    def on_epoch(result: Any) -> None:  # compared after every epoch: the end of a fit reloads rank 0's best weights
        mismatches.update(_rank_mismatches(method))
        if log_epoch is not None:
            log_epoch(result)

    trainer.on_epoch = on_epoch
    if phase.kind == "train":
        ckpt = exp.checkpointer
        state = ckpt.restore(phase, sharded) if ckpt is not None else None
        save = (lambda s: ckpt.save(phase, sharded, s)) if ckpt is not None else None
        result = trainer.fit(folder / "weights.safetensors", state, save)
        summary.update(fit=_fit_summary(result))
        if is_main():
            learning_curve(result, folder / "learning_curve.png", f"{exp.cfg.model.name} / {exp.cfg.embedding.method}: {phase.name}", _oracle(exp, "valid"))
    else:
        summary.update(search=method.search(lambda: trainer.evaluate(trainer.valid_reader).auc))
        save_weights(sharded.module, folder / "weights.safetensors")
    summary["rank_mismatches"] = sorted(mismatches.union(_rank_mismatches(method)))
    decided = broadcast_tensors(method.phase_state())  # identical decisions on every rank
    method.load_phase_state(decided)
    summary["memory_bytes"] = method.memory_bytes()
    if is_main():
        save_tensors({k: v.contiguous() for k, v in decided.items()}, folder / "state.safetensors")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    barrier()
    return method, trainer, summary


def _rank_mismatches(method: EmbeddingMethod) -> list[str]:
    """Names of the method's replicated state (``phase_state()`` and every tensor of its
    ``state_dict`` that is not a shard: thresholds, masks, dims) that differ between ranks at
    the end of a phase, before rank 0's decisions are broadcast; ``[]`` in one process. A
    mismatch means training let the ranks drift apart: it is warned about and recorded in the
    phase's ``summary.json``."""
    if world()[1] == 1:
        return []
    state = {f"phase_state/{k}": v for k, v in method.phase_state().items()}
    state |= {f"state_dict/{k}": v for k, v in method.state_dict().items() if type(v) is torch.Tensor or isinstance(v, torch.nn.Parameter)}
    mismatches = replicated_mismatches({k: v.detach().cpu() for k, v in state.items()})
    if mismatches and is_main():
        warnings.warn(f"method '{method.name}': state differs between ranks: {mismatches[:5]}", RuntimeWarning, stacklevel=2)
    return mismatches


def _restore(exp: Experiment, phase: Phase, folder: Location | None) -> tuple[EmbeddingMethod, Trainer]:
    """Method and trainer of a finished phase, for evaluating a run whose phases all finished."""
    assert folder is not None
    method, sharded = exp.build(phase)
    load_weights(sharded.module, folder / "weights.safetensors")
    method.load_phase_state(load_tensors(folder / "state.safetensors"))
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


TEST_SCORES = "test_scores.safetensors"  # the test rows' labels and predicted probabilities (the bench's bootstrap CIs)
RUN_OUTPUTS = ("phases", "initial.safetensors", "metrics.json", "diagnostics.json", "learning_curve.png", TEST_SCORES)


def clear_previous_run(out: Location, extra: tuple[str, ...] = ()) -> None:
    """Remove what an earlier run left in ``out`` (its weights would otherwise seed this run)."""
    for name in (*RUN_OUTPUTS, *extra):
        remove(out / name)


def local_dir(out: Location) -> Path:
    """The local folder of the driver's own files (MLflow spool, copies of the artifacts it
    logs): the run folder itself, or a new temporary folder for a run folder on a URI."""
    return out if isinstance(out, Path) else Path(tempfile.mkdtemp(prefix="recsys-run-"))


def release_local_dir(out: Location, local: Path) -> None:
    """Remove ``local_dir``'s temporary folder, unless it keeps MLflow calls to replay."""
    if local != out and not any(local.glob("mlflow_spool*.jsonl")):
        shutil.rmtree(local, ignore_errors=True)


def train_experiment(cfg: ExperimentConfig, out_dir: str | Path | StoragePath, resume: bool = False,
                     epoch_hook: EpochHook | None = None) -> dict[str, Any]:
    """Train, evaluate and record one experiment; returns what ``metrics.json`` holds.

    ``out_dir`` is a folder or a URI (``recsys.storage``); the dataset may be either too.
    ``epoch_hook`` (in-process runs only) is called after every epoch of every phase."""
    if cfg.training.workers > 1:
        from recsys.training.ray_trainer import train_distributed

        return train_distributed(cfg, out_dir, resume)
    out_dir = location(out_dir)
    load_dataset_spec(cfg.data.path)  # a missing dataset fails before a folder or an MLflow run exists
    out_dir.mkdir(parents=True, exist_ok=True)
    started_group = ensure_process_group()
    if not resume and is_main():
        clear_previous_run(out_dir)
    barrier()  # no rank looks at the folder before it is cleared
    local = local_dir(out_dir)
    tracker = make_tracker(cfg.tracking, tags=run_tags(cfg), run_dir=local)
    stop_system_metrics = start_system_metrics(tracker) if cfg.tracking.system_metrics else (lambda: None)
    status = "FAILED"
    try:
        exp = Experiment(cfg, out_dir, tracker)
        exp.epoch_hook = epoch_hook
        tracker.log_params(flatten(cfg))
        metrics = _run_phases(exp, resume)
        finish_run(cfg, out_dir, tracker, metrics, local)
        status = "FINISHED"
        return metrics
    finally:
        stop_system_metrics()
        tracker.close(status)
        release_local_dir(out_dir, local)
        if started_group:
            dist.destroy_process_group()


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    return {"method": cfg.embedding.method, "model": cfg.model.name, "workers": str(cfg.training.workers)}


def finish_run(cfg: ExperimentConfig, run_dir: Location, tracker: Tracker, metrics: dict[str, Any], local: Path | None = None) -> None:
    """Write ``metrics.json``/``config.yaml``, log final metrics, artifacts and method diagnostics,
    and register the model when ``tracking.register_as`` is set. A run folder on a URI is first
    copied into ``local`` (MLflow logs local files)."""
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    if isinstance(run_dir, StoragePath):
        if not cfg.tracking.enabled:
            return
        out_dir = download_tree(run_dir, local or Path(tempfile.mkdtemp(prefix="recsys-run-")), only=(*RUN_OUTPUTS, "config.yaml"))
    else:
        out_dir = run_dir
    top = [out_dir / name for name in ("metrics.json", "config.yaml", "learning_curve.png", "diagnostics.json") if (out_dir / name).exists()]
    phase_files = [*sorted(out_dir.glob("phases/*/*.png")), *sorted(out_dir.glob("phases/*/summary.json"))]
    if cfg.tracking.log_checkpoint:
        phase_files += [p for name in CHECKPOINT_FILES for p in sorted(out_dir.glob(f"phases/*/{name}"))]
    for path in [*top, *phase_files]:
        tracker.log_artifact(path, None if path.parent == out_dir else f"phases/{path.parent.name}")
    register = getattr(tracker, "register", None)
    if cfg.tracking.register_as and register is not None:
        register(out_dir, cfg.tracking.register_as, cfg.tracking.alias)


def _run_phases(exp: Experiment, resume: bool) -> dict[str, Any]:
    phases = exp.phases()
    choice = choose(exp.ctx) if exp.cfg.embedding.method == AutoEmbedding.name else None
    if choice is not None and is_main():
        print(f"embedding.method auto: {choice.method} {choice.options or ''}({choice.reason})")
        exp.tracker.log_params({"auto.method": choice.method, "auto.reason": choice.reason})
    previous: Location | None = None
    summaries: dict[str, dict[str, Any]] = {}
    last: tuple[EmbeddingMethod, Trainer] | None = None
    finished = [(_phase_dir(exp.out, p) / "summary.json").exists() and (_phase_dir(exp.out, p) / "state.safetensors").exists() for p in phases]
    barrier()  # every rank sees the same finished phases
    for phase, done in zip(phases, finished):
        folder = _phase_dir(exp.out, phase)
        if resume and done:
            print(f"phase '{phase.name}' already finished in {folder}; skipping it")
            summaries[phase.name] = json.loads((folder / "summary.json").read_text())
            previous = folder
            continue
        method, trainer, summaries[phase.name] = _run_phase(exp, phase, previous)
        previous, last = folder, (method, trainer)
    method, trainer = last if last is not None else _restore(exp, phases[-1], previous)
    labels, probs = trainer.predict(exp.reader("test", method))
    test = EvalResult(auc=auc(labels, probs), logloss=logloss(labels, probs), rows=len(labels))
    if is_main():
        save_tensors({"labels": torch.from_numpy(labels.astype(np.float32)), "probs": torch.from_numpy(probs.astype(np.float32))},
                     exp.out / TEST_SCORES)
    fits = [s["fit"] for s in summaries.values() if "fit" in s]
    method_bytes = method.memory_bytes()
    metrics: dict[str, Any] = {
        "test_auc": test.auc,
        "test_logloss": test.logloss,
        "test_rows": test.rows,
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
    if choice is not None:
        metrics["method_choice"] = {"method": choice.method, "options": choice.options, "reason": choice.reason}
    test_oracle = exp.spec.splits["test"].oracle
    if test_oracle is not None:
        metrics["oracle_test_auc"] = test_oracle.auc
        metrics["oracle_test_logloss"] = test_oracle.logloss
    if len(phases) > 1:
        metrics["phases"] = {name: {k: v for k, v in s.items() if k != "phase"} for name, s in summaries.items()}
    plot = _phase_dir(exp.out, phases[-1]) / "learning_curve.png"
    diagnostics = method.diagnostics()  # on every rank: it may gather sharded tables
    if is_main():
        diagnostics = _with_collisions(exp, method, diagnostics)
        if plot.exists():
            (exp.out / "learning_curve.png").write_bytes(plot.read_bytes())
        if diagnostics:
            (exp.out / "diagnostics.json").write_text(json.dumps(diagnostics, indent=2, default=str) + "\n")
    return metrics


def _with_collisions(exp: Experiment, method: EmbeddingMethod, diagnostics: dict[str, Any]) -> dict[str, Any]:
    """``diagnostics`` plus, for a hashing method that reports them (``reports_collisions``, e.g.
    ``unified``, also wrapped by ``dsl``/``optembed``), the collision statistics of the train
    vocabularies' raw ids."""
    if not method.reports_collisions():
        return diagnostics
    folder = location(exp.cfg.data.path)
    ids = {f.name: read_parquet(folder / f.vocabulary, columns=["id"]).column("id").to_numpy() for f in exp.spec.sparse_fields if f.vocabulary}
    return diagnostics | {"collisions": method.collision_stats(ids)}
