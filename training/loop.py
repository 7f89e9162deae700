"""The one train/eval loop: used in-process and by each Ray worker.

Example:
    >>> trainer = Trainer(sharded, method, train_reader, valid_reader, cfg.training)  # doctest: +SKIP
    >>> result = trainer.fit(checkpoint_path=out / "best.safetensors")                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch
from tqdm import tqdm

from recsys.config import TrainingConfig
from recsys.data.batch import Batch
from recsys.embeddings import EmbeddingMethod
from recsys.metrics import auc, logloss
from training.checkpoint import load_weights, save_weights
from training.distributed import ShardedModel


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


StepCallback = Callable[[int, float, float], None]  # (step, loss, samples/s)
EpochCallback = Callable[[EpochResult], None]


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
        self.step = 0

    def _train_epoch(self, epoch: int, result: FitResult) -> tuple[float, float, int]:
        self.model.train()
        self.train_reader.set_epoch(epoch)
        limit = self.cfg.max_steps_per_epoch
        total = min(len(self.train_reader), limit) if limit else len(self.train_reader)
        bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not self.cfg.progress, leave=False, unit="step")
        losses: list[float] = []
        samples = 0
        busy = 0.0
        window_start, window_samples = time.perf_counter(), 0
        for i, batch in enumerate(self.train_reader):
            if limit is not None and i >= limit:
                break
            start = time.perf_counter()
            loss, _ = self.model(batch)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.method.on_train_step(self.step)
            busy += time.perf_counter() - start
            self.step += 1
            samples += len(batch)
            window_samples += len(batch)
            value = float(loss.detach())
            losses.append(value)
            bar.update(1)
            if self.step % self.cfg.log_every == 0:
                now = time.perf_counter()
                rate = window_samples / max(now - window_start, 1e-9)
                window_start, window_samples = now, 0
                bar.set_postfix(loss=f"{np.mean(losses[-self.cfg.log_every:]):.4f}", samples_s=f"{rate:,.0f}")
                result.step_losses.append((self.step, float(np.mean(losses[-self.cfg.log_every:]))))
                if self.on_step:
                    self.on_step(self.step, result.step_losses[-1][1], rate)
        bar.close()
        return float(np.mean(losses)) if losses else float("nan"), samples / max(busy, 1e-9), len(losses)

    @torch.no_grad()
    def predict(self, reader: Reader) -> tuple[np.ndarray, np.ndarray]:
        """Labels and predicted click probabilities over a whole reader."""
        self.model.eval()
        labels, probs = [], []
        for batch in reader:
            _, logits = self.model(batch)
            labels.append(batch.labels.numpy())
            probs.append(torch.sigmoid(logits.detach().float()).numpy())
        return np.concatenate(labels), np.concatenate(probs)

    def evaluate(self, reader: Reader) -> EvalResult:
        labels, probs = self.predict(reader)
        return EvalResult(auc=auc(labels, probs), logloss=logloss(labels, probs), rows=len(labels))

    def fit(self, checkpoint_path: Path) -> FitResult:
        """Train up to ``cfg.epochs``; keep the best-validation weights at ``checkpoint_path``
        and leave them loaded in the model at the end."""
        result = FitResult()
        best_auc, bad_epochs = -1.0, 0
        per_epoch = len(self.train_reader)
        if self.cfg.max_steps_per_epoch:
            per_epoch = min(per_epoch, self.cfg.max_steps_per_epoch)
        self.method.on_train_begin(per_epoch * self.cfg.epochs)
        for epoch in range(self.cfg.epochs):
            loss, rate, steps = self._train_epoch(epoch, result)
            valid = self.evaluate(self.valid_reader)
            er = EpochResult(epoch, steps, loss, rate, valid)
            result.epochs.append(er)
            if self.on_epoch:
                self.on_epoch(er)
            if valid.auc > best_auc:
                best_auc, bad_epochs, result.best_epoch = valid.auc, 0, epoch
                save_weights(self.model, checkpoint_path)
            else:
                bad_epochs += 1
                if bad_epochs > self.cfg.patience:
                    result.stopped_early = True
                    break
        load_weights(self.model, checkpoint_path)
        return result
