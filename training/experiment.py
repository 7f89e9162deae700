"""The pieces of one run that every phase rebuilds from the config: ``Experiment``.

An ``Experiment`` holds the config, the run folder and the tracker of a run, and builds each
phase's method and sharded model (seeded: identical initial weights every time), its readers
(Parquet in one process, Ray Data shards in a Ray worker: ``readers``) and its ``Trainer``.
``recsys.training.phases.run_phases`` runs the phases; ``recsys.training.run`` and
``recsys.training.ray_trainer`` set it up.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Protocol

import numpy as np
import torch

from recsys.assembly import Assembly
from recsys.config import ExperimentConfig
from recsys.data.batch import BatchLayout, ParquetBatchReader, prepared
from recsys.data.prefetch import Prefetched
from recsys.embeddings import EmbeddingMethod, Phase
from recsys.models.train import TrainModel
from recsys.runfolder import RunFolder
from recsys.storage import Location
from recsys.training.distributed import ShardedModel, shard
from recsys.training.loop import EpochResult, LoopState, Reader, Trainer
from recsys.training.tracking import Tracker

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
        self,
        cfg: ExperimentConfig,
        out_dir: Location,
        tracker: Tracker,
        readers: ReaderFactory | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = out_dir
        self.folder = RunFolder(out_dir)
        self.tracker = tracker
        self.readers = readers
        self.checkpointer = checkpointer
        self.step_hook: Callable[[str, int], None] | None = None  # (phase, step) at every logged step
        self.epoch_hook: EpochHook | None = None  # (phase, epoch, valid AUC) after every epoch (``recsys tune``)
        self.parts = Assembly.of(cfg)
        self.spec, self.ctx = self.parts.spec, self.parts.ctx

    def phases(self) -> list[Phase]:
        return self.parts.phases()

    def build(self, phase: Phase | None) -> tuple[EmbeddingMethod, ShardedModel]:
        """Seeded method + model (identical initial weights every time), entered into ``phase``, sharded."""
        seed_everything(self.cfg.training.seed)
        method = self.parts.method(phase)
        return method, shard(TrainModel(self.parts.model(method)), method, self.cfg.training)

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
        self.tracker.log_metrics(
            {f"{prefix}valid_auc": e.valid.auc, f"{prefix}valid_logloss": e.valid.logloss, f"{prefix}epoch_train_loss": e.train_loss}, e.epoch
        )
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
            sharded,
            method,
            self.reader("train", method),
            self.reader("valid", method, eval_rows),
            cfg,
            on_step=on_step,
            on_epoch=lambda e: self._epoch_done(phase, e),
        )


def row_limit(cfg: ExperimentConfig, split: str, max_rows: int | None = None) -> int | None:
    """Rows of ``split`` a reader uses: ``data.max_*_rows`` and a phase's ``eval_rows``."""
    if split == "train":
        return cfg.data.max_train_rows
    limits = [x for x in (max_rows, cfg.data.max_eval_rows) if x is not None]
    return min(limits) if limits else None
