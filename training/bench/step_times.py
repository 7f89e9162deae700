"""Train-step timing shared by the speed benchmarks: a method's model stepped as ``recsys train`` does it.

``config_stepper`` builds the method and model of an experiment config (its first phase, e.g.
OptEmbed's supernet), sharded by DMP with the fused sparse optimizer, and returns one optimizer
step with the method's hooks (``on_train_begin`` once, ``on_train_step`` after each step, so
DSL's prune/regrow is amortised) plus the pre-read train batches of the method's id scheme,
passed through the method's ``prepare`` as the training loader does on its own thread (that
cost, e.g. Unified Embedding's hashing, is timed separately: ``prepare_ms``).
``alternate`` times several steppers in short alternating rounds (load on a shared machine hits
all alike) and reports the median and minimum round per stepper and their ratios to a baseline.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from recsys.config import ExperimentConfig
from recsys.data.batch import Batch, prepared

Step = Callable[[Batch], None]


def sharded_step(sharded: Any, method: Any, total_steps: int) -> Step:
    """One optimizer step of a sharded ``TrainModel`` and the method's per-step hook."""
    method.on_train_begin(total_steps)
    count = [0]

    def step(batch: Batch) -> None:
        loss, _ = sharded.module(batch)
        sharded.optimizer.zero_grad()
        loss.backward()
        sharded.optimizer.step()
        method.on_train_step(count[0])
        count[0] += 1

    return step


@dataclass
class Stepper:
    """A method's train step, its batches (already ``prepare``d, as the loader thread hands them
    over), its embedding bytes and the loader-thread cost of ``prepare`` per batch."""

    step: Step
    batches: list[Batch]
    embedding_bytes: int
    prepare_ms: float


def prepared_batches(method: Any, raw: list[Batch]) -> tuple[list[Batch], float]:
    """``raw`` through ``method.prepare`` (an ``EmbeddingMethod``), and its cost in ms per batch
    (the method's cached plans built before timing)."""
    if not raw:
        return [], 0.0
    prepared(method, raw[0])
    start = time.perf_counter()
    out = [prepared(method, b) for b in raw]
    return out, 1000 * (time.perf_counter() - start) / len(raw)


def config_stepper(cfg: ExperimentConfig, batches: int = 20, total_steps: int = 10_000) -> Stepper:
    """The experiment's first phase as ``recsys train`` steps it (call in a process group)."""
    from recsys.training.experiment import Experiment
    from recsys.training.tracking import NullTracker

    exp = Experiment(cfg, Path(tempfile.gettempdir()) / "recsys_step_times", NullTracker())
    phase = exp.phases()[0]
    method, sharded = exp.build(phase)
    pre_read, prepare_ms = prepared_batches(method, [b for _, b in zip(range(batches), exp.reader("train", method).reader)])
    sharded.module.train()
    return Stepper(sharded_step(sharded, method, total_steps), pre_read, method.memory_bytes(), prepare_ms)


def timed_steps(step: Step, batches: list[Batch], steps: int, start_at: int = 0) -> float:
    """Mean seconds per step over ``steps`` steps cycling through ``batches``."""
    start = time.perf_counter()
    for i in range(steps):
        step(batches[(start_at + i) % len(batches)])
    return (time.perf_counter() - start) / steps


def alternate(
    steppers: dict[str, tuple[Step, list[Batch]]],
    steps: int,
    rounds: int,
    warmup: int = 5,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Round-robin timing: each round runs ``steps`` steps of every stepper in turn.

    Returns per stepper the median and minimum round (ms per step) and, against ``baseline``
    (default: the first), the ratios of the medians and of the minima (the minimum is the
    robust figure on a busy machine)."""
    for step, batches in steppers.values():
        timed_steps(step, batches, warmup)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for r in range(rounds):
        for key, (step, batches) in steppers.items():
            times[key].append(timed_steps(step, batches, steps, start_at=r * steps))
    base = baseline or next(iter(steppers))
    median = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {
        "steps_per_round": steps,
        "rounds": rounds,
        "baseline": base,
        "step_ms_median": {k: 1000 * v for k, v in median.items()},
        "step_ms_min": {k: 1000 * v for k, v in best.items()},
        "ratio_median": {k: median[k] / median[base] for k in steppers},
        "ratio_min": {k: best[k] / best[base] for k in steppers},
    }
