"""The phase runner: a method's phases in order, then the test split; one rank or many.

``run_phases`` is what both paths run (``recsys.training.run`` in this process, every Ray Train
worker in ``recsys.training.ray_trainer``). Each phase builds the method and model afresh from
the config (``Experiment.build``), loads its starting weights (the previous phase's best, or the
run's initial weights for a rewind), restores the decisions of earlier phases (``phase_state``),
then trains or searches. A finished phase leaves ``phases/<name>/`` (``recsys.runfolder``) with
its weights, state and ``summary.json``; with ``resume=True`` finished phases are skipped. With
several ranks, files are written by rank 0 and phase decisions are broadcast from it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from recsys.embeddings import EmbeddingMethod, Phase
from recsys.embeddings.auto import AutoEmbedding, choose
from recsys.metrics import auc, logloss
from recsys.runfolder import PhaseFolder
from recsys.storage import Location, load_tensors, save_tensors
from recsys.training.checkpoint import load_weights, save_weights
from recsys.training.collectives import barrier, broadcast_tensors, is_main, replicated_mismatches, world
from recsys.training.experiment import Experiment
from recsys.training.loop import EvalResult, Trainer
from recsys.training.outcome import fit_summary, oracle_auc, run_metrics, write_outputs
from recsys.training.plots import learning_curve


def run_phases(exp: Experiment, resume: bool) -> dict[str, Any]:
    """Run (or, resuming, skip the finished) phases of ``exp``, evaluate the test split, write the
    run's diagnostics and learning curve (rank 0); returns what ``metrics.json`` holds."""
    phases = exp.phases()
    choice = choose(exp.ctx) if exp.cfg.embedding.method == AutoEmbedding.name else None
    if choice is not None and is_main():
        print(f"embedding.method auto: {choice.method} {choice.options or ''}({choice.reason})")
        exp.tracker.log_params({"auto.method": choice.method, "auto.reason": choice.reason})
    previous: PhaseFolder | None = None
    summaries: dict[str, dict[str, Any]] = {}
    last: tuple[EmbeddingMethod, Trainer] | None = None
    finished = [exp.folder.phase(p.name).finished() for p in phases]
    barrier()  # every rank sees the same finished phases
    for phase, done in zip(phases, finished):
        folder = exp.folder.phase(phase.name)
        if resume and done:
            print(f"phase '{phase.name}' already finished in {folder.root}; skipping it")
            summaries[phase.name] = folder.read_summary()
            previous = folder
            continue
        method, trainer, summaries[phase.name] = run_phase(exp, phase, previous)
        previous, last = folder, (method, trainer)
    method, trainer = last if last is not None else _restore(exp, phases[-1], previous)
    labels, probs = trainer.predict(exp.reader("test", method))
    test = EvalResult(auc=auc(labels, probs), logloss=logloss(labels, probs), rows=len(labels))
    valid_labels, valid_probs = trainer.predict(trainer.valid_reader)  # the rows valid_auc is measured on (recsys tune's paired pick)
    if is_main():
        _save_scores(labels, probs, exp.folder.test_scores)
        _save_scores(valid_labels, valid_probs, exp.folder.valid_scores)
    chosen = None if choice is None else {"method": choice.method, "options": choice.options, "reason": choice.reason}
    metrics = run_metrics(exp, method, test, summaries, phases, chosen)
    write_outputs(exp, method, phases[-1])
    return metrics


def _save_scores(labels: np.ndarray, probs: np.ndarray, loc: Location) -> None:
    save_tensors({"labels": torch.from_numpy(labels.astype(np.float32)), "probs": torch.from_numpy(probs.astype(np.float32))}, loc)


def run_phase(exp: Experiment, phase: Phase, previous: PhaseFolder | None) -> tuple[EmbeddingMethod, Trainer, dict[str, Any]]:
    """Train or search one phase from ``previous`` (None: the first); returns its method, trainer and summary."""
    method, sharded = exp.build(phase)
    start = exp.folder.initial if phase.weights == "initial" or previous is None else previous.weights
    exists = start.exists()
    barrier()  # every rank decides before rank 0 writes
    if not exists:
        save_weights(sharded.module, start)
    load_weights(sharded.module, start)
    if previous is not None:
        method.load_phase_state(load_tensors(previous.state))
    folder = exp.folder.phase(phase.name)
    folder.root.mkdir(parents=True, exist_ok=True)
    trainer = exp.trainer(method, sharded, phase, phase.eval_rows)
    summary: dict[str, Any] = {"phase": asdict(phase)}
    mismatches: set[str] = set()
    log_epoch = trainer.on_epoch

    def on_epoch(result: Any) -> None:  # compared after every epoch: the end of a fit reloads rank 0's best weights
        mismatches.update(rank_mismatches(method))
        if log_epoch is not None:
            log_epoch(result)

    trainer.on_epoch = on_epoch
    if phase.kind == "train":
        ckpt = exp.checkpointer
        state = ckpt.restore(phase, sharded) if ckpt is not None else None
        save = (lambda s: ckpt.save(phase, sharded, s)) if ckpt is not None else None
        result = trainer.fit(folder.weights, state, save)
        summary.update(fit=fit_summary(result))
        if is_main():
            title = f"{exp.cfg.model.name} / {exp.cfg.embedding.method}: {phase.name}"
            learning_curve(result, folder.learning_curve, title, oracle_auc(exp, "valid"))
    else:
        summary.update(search=method.search(lambda: trainer.evaluate(trainer.valid_reader).auc))
        save_weights(sharded.module, folder.weights)
    summary["rank_mismatches"] = sorted(mismatches.union(rank_mismatches(method)))
    decided = broadcast_tensors(method.phase_state())  # identical decisions on every rank
    method.load_phase_state(decided)
    summary["memory_bytes"] = method.memory_bytes()
    if is_main():
        save_tensors({k: v.contiguous() for k, v in decided.items()}, folder.state)
        folder.summary.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    barrier()
    return method, trainer, summary


def rank_mismatches(method: EmbeddingMethod) -> list[str]:
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


def _restore(exp: Experiment, phase: Phase, folder: PhaseFolder | None) -> tuple[EmbeddingMethod, Trainer]:
    """Method and trainer of a finished phase, for evaluating a run whose phases all finished."""
    assert folder is not None
    method, sharded = exp.build(phase)
    load_weights(sharded.module, folder.weights)
    method.load_phase_state(load_tensors(folder.state))
    return method, exp.trainer(method, sharded, phase)
