"""The one train/eval loop: used in-process and by each Ray worker.

Example:
    >>> trainer = Trainer(sharded, method, train_reader, valid_reader, cfg.training)  # doctest: +SKIP
    >>> result = trainer.fit(checkpoint_path=out / "best.safetensors")                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from tqdm import tqdm

from recsys.config import TrainingConfig
from recsys.data.batch import Batch
from recsys.embeddings import EmbeddingMethod
from recsys.metrics import auc, logloss
from recsys.training.checkpoint import load_weights, save_weights
from recsys.training.collectives import gather_rows
from recsys.training.distributed import ShardedModel


class Reader(Protocol):
    def __iter__(self) -> Iterable[Batch]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class EvalResult:
    auc: float
    logloss: float
    rows: int


@dataclass
class EpochResult:
    epoch: int
    steps: int
    train_loss: float
    train_samples_per_s: float
    valid: EvalResult


@dataclass
class FitResult:
    epochs: list[EpochResult] = field(default_factory=list)
    step_losses: list[tuple[int, float]] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    @property
    def best(self) -> EpochResult:
        return next(e for e in self.epochs if e.epoch == self.best_epoch)

    @property
    def train_samples_per_s(self) -> float:
        return float(np.mean([e.train_samples_per_s for e in self.epochs])) if self.epochs else 0.0


@dataclass
class LoopState:
    """Where a fit stands: enough to resume it exactly (JSON-able through ``to_json``)."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # batches of ``epoch`` already trained
    step: int = 0  # optimizer steps so far (global step)
    best_auc: float = -1.0
    bad_epochs: int = 0
    loss_sum: float = 0.0  # over the batches of the epoch in progress
    samples: int = 0
    busy_s: float = 0.0
    result: FitResult = field(default_factory=FitResult)

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_sum, self.samples, self.busy_s = self.epoch + 1, 0, 0.0, 0, 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LoopState":
        r = data["result"]
        epochs = [EpochResult(**{**e, "valid": EvalResult(**e["valid"])}) for e in r["epochs"]]
        result = FitResult(epochs, [tuple(x) for x in r["step_losses"]], r["best_epoch"], r["stopped_early"])  # type: ignore[misc]
        return cls(**{**data, "result": result})


StepCallback = Callable[[int, float, float], None]  # (step, loss, samples/s)
EpochCallback = Callable[[EpochResult], None]
CheckpointCallback = Callable[[LoopState], None]


class Trainer:
    """Trains a sharded ``TrainModel`` with early stopping on validation AUC."""

    def __init__(
        self,
        sharded: ShardedModel,
        method: EmbeddingMethod,
        train: Reader,
        valid: Reader,
        cfg: TrainingConfig,
        on_step: StepCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        self.model = sharded.module
        self.optimizer = sharded.optimizer
        self.method = method
        self.train_reader = train
        self.valid_reader = valid
        self.cfg = cfg
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.state = LoopState()

    @property
    def step(self) -> int:
        return self.state.step

    def _train_epoch(self, epoch: int, on_checkpoint: CheckpointCallback | None) -> tuple[float, float, int]:
        state, result = self.state, self.state.result
        self.model.train()
        self.train_reader.set_epoch(epoch)
        limit = self.cfg.max_steps_per_epoch
        total = min(len(self.train_reader), limit) if limit else len(self.train_reader)
        bar = tqdm(total=total, initial=state.batch, desc=f"epoch {epoch}", disable=not self.cfg.progress, leave=False, unit="step")
        losses: list[float] = []
        window_start, window_samples = time.perf_counter(), 0
        every = self.cfg.checkpoint_every
        for i, batch in enumerate(self.train_reader):
            if limit is not None and i >= limit:
                break
            if i < state.batch:
                continue  # trained before the checkpoint this fit resumed from
            start = time.perf_counter()
            loss, _ = self.model(batch)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.method.on_train_step(state.step)
            state.busy_s += time.perf_counter() - start
            state.step += 1
            state.batch = i + 1
            state.samples += len(batch)
            window_samples += len(batch)
            value = float(loss.detach())
            state.loss_sum += value
            losses.append(value)
            bar.update(1)
            if state.step % self.cfg.log_every == 0:
                now = time.perf_counter()
                rate = window_samples / max(now - window_start, 1e-9)
                window_start, window_samples = now, 0
                bar.set_postfix(loss=f"{np.mean(losses[-self.cfg.log_every :]):.4f}", samples_s=f"{rate:,.0f}")
                result.step_losses.append((state.step, float(np.mean(losses[-self.cfg.log_every :]))))
                if self.on_step:
                    self.on_step(state.step, result.step_losses[-1][1], rate)
            if on_checkpoint is not None and every and state.step % every == 0 and state.batch < total:
                on_checkpoint(state)
        bar.close()
        mean = state.loss_sum / state.batch if state.batch else float("nan")
        return mean, state.samples / max(state.busy_s, 1e-9), state.batch

    @torch.no_grad()
    def predict(self, reader: Reader) -> tuple[np.ndarray, np.ndarray]:
        """Labels and predicted click probabilities over a whole reader (with several ranks:
        over every rank's reader, in rank order, on every rank)."""
        self.model.eval()
        labels, probs = [], []
        for batch in reader:
            _, logits = self.model(batch)
            labels.append(batch.labels.numpy())
            probs.append(torch.sigmoid(logits.detach().float()).numpy())
        both = gather_rows(np.stack([np.concatenate(labels), np.concatenate(probs)], axis=1))
        return both[:, 0], both[:, 1]

    def evaluate(self, reader: Reader) -> EvalResult:
        labels, probs = self.predict(reader)
        return EvalResult(auc=auc(labels, probs), logloss=logloss(labels, probs), rows=len(labels))

    def fit(self, checkpoint_path: Path, state: LoopState | None = None, on_checkpoint: CheckpointCallback | None = None) -> FitResult:
        """Train up to ``cfg.epochs``; keep the best-validation weights at ``checkpoint_path``
        and leave them loaded in the model at the end.

        ``state`` resumes a fit from a checkpoint (its step, epoch and batch, early-stopping
        state and history); ``on_checkpoint(state)`` is called after every epoch and every
        ``cfg.checkpoint_every`` steps, with the model and optimizer at that state.
        """
        self.state = state = state or LoopState()
        result = state.result
        per_epoch = len(self.train_reader)
        if self.cfg.max_steps_per_epoch:
            per_epoch = min(per_epoch, self.cfg.max_steps_per_epoch)
        self.method.on_train_begin(per_epoch * self.cfg.epochs)
        if state.step:
            self.method.on_train_resume(state.step)
        while state.epoch < self.cfg.epochs and not result.stopped_early:
            epoch = state.epoch
            loss, rate, steps = self._train_epoch(epoch, on_checkpoint)
            valid = self.evaluate(self.valid_reader)
            er = EpochResult(epoch, steps, loss, rate, valid)
            result.epochs.append(er)
            if self.on_epoch:
                self.on_epoch(er)
            servable = self.method.servable()  # epochs before (a DSL ramp) are neither kept nor counted
            if servable and valid.auc > state.best_auc:
                state.best_auc, state.bad_epochs, result.best_epoch = valid.auc, 0, epoch
                save_weights(self.model, checkpoint_path)
            elif servable:
                state.bad_epochs += 1
                result.stopped_early = state.bad_epochs > self.cfg.patience
            state.next_epoch()
            if on_checkpoint is not None:
                on_checkpoint(state)
        if result.best_epoch < 0:
            raise RuntimeError(f"method '{self.method.name}' never reached its served form in {state.step} steps")
        load_weights(self.model, checkpoint_path)
        return result
