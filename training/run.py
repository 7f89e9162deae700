"""Run one experiment end to end in this process: data → method → model → fit → test → files/MLflow.

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["embedding.method=hash"])  # doctest: +SKIP
    >>> metrics = train_experiment(cfg, Path("runs/hash"))                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from recsys.config import ExperimentConfig, flatten
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.embeddings import MethodContext, build_method
from recsys.features import DatasetSpec, load_dataset_spec
from recsys.models import build_model
from recsys.models.train import TrainModel
from training.distributed import ensure_process_group, shard
from training.loop import EpochResult, FitResult, Trainer
from training.plots import learning_curve
from training.tracking import make_tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _readers(cfg: ExperimentConfig, layout: BatchLayout) -> dict[str, ParquetBatchReader]:
    t, d = cfg.training, cfg.data
    return {
        "train": ParquetBatchReader(d.path, "train", layout, t.batch_size, shuffle=True, seed=t.seed, max_rows=d.max_train_rows),
        "valid": ParquetBatchReader(d.path, "valid", layout, t.eval_batch_size, max_rows=d.max_eval_rows),
        "test": ParquetBatchReader(d.path, "test", layout, t.eval_batch_size, max_rows=d.max_eval_rows),
    }


def _metrics(spec: DatasetSpec, result: FitResult, test: Any, method_bytes: int, full_bytes: int) -> dict[str, Any]:
    best: EpochResult = result.best
    metrics: dict[str, Any] = {
        "test_auc": test.auc,
        "test_logloss": test.logloss,
        "valid_auc": best.valid.auc,
        "valid_logloss": best.valid.logloss,
        "embedding_bytes": method_bytes,
        "full_embedding_bytes": full_bytes,
        "compression_ratio": full_bytes / max(method_bytes, 1),
        "train_samples_per_s": result.train_samples_per_s,
        "epochs": len(result.epochs),
        "best_epoch": best.epoch,
        "stopped_early": result.stopped_early,
    }
    test_oracle = spec.splits["test"].oracle
    if test_oracle is not None:
        metrics["oracle_test_auc"] = test_oracle.auc
        metrics["oracle_test_logloss"] = test_oracle.logloss
    return metrics


def train_experiment(cfg: ExperimentConfig, out_dir: Path) -> dict[str, Any]:
    """Train, evaluate and record one experiment; returns what ``metrics.json`` holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = load_dataset_spec(cfg.data.path)
    seed_everything(cfg.training.seed)
    ctx = MethodContext.from_spec(spec, cfg.model.embedding_dim, cfg.embedding.compression, cfg.embedding.budget_bytes)
    method = build_method(cfg.embedding.method, ctx, cfg.embedding.options)
    method_bytes = method.memory_bytes()
    model = TrainModel(build_model(cfg.model, method, len(spec.dense_fields)))
    started_group = ensure_process_group()
    tracker = make_tracker(cfg.tracking, tags={"method": cfg.embedding.method, "model": cfg.model.name})
    status = "FAILED"
    try:
        sharded = shard(model, method, cfg.training)
        readers = _readers(cfg, BatchLayout.from_spec(spec, method.id_scheme))
        tracker.log_params(flatten(cfg))
        tracker.log_metrics({"embedding_bytes": method_bytes, "compression_ratio": ctx.full_bytes / max(method_bytes, 1)})
        trainer = Trainer(
            sharded, method, readers["train"], readers["valid"], cfg.training,
            on_step=lambda step, loss, rate: tracker.log_metrics({"train_loss": loss, "train_samples_per_s": rate}, step),
            on_epoch=lambda e: tracker.log_metrics({"valid_auc": e.valid.auc, "valid_logloss": e.valid.logloss, "epoch_train_loss": e.train_loss}, e.epoch),
        )
        result = trainer.fit(out_dir / "best.safetensors")
        test = trainer.evaluate(readers["test"])
        metrics = _metrics(spec, result, test, method_bytes, ctx.full_bytes)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        oracle = spec.splits["valid"].oracle
        title = f"{cfg.model.name} / {cfg.embedding.method} ({metrics['compression_ratio']:.1f}x)"
        learning_curve(result, out_dir / "learning_curve.png", title, oracle.auc if oracle else None)
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        for name in ("metrics.json", "config.yaml", "learning_curve.png"):
            tracker.log_artifact(out_dir / name)
        status = "FINISHED"
        return metrics
    finally:
        tracker.close(status)
        if started_group:
            dist.destroy_process_group()
