"""Training throughput of DLRM-``full`` (TorchRec DMP, fbgemm fused sparse optimizer) against a
plain-PyTorch ``nn.EmbeddingBag`` DLRM of the same architecture, in the same process.

Both read the same pre-built batches (input handling excluded). The plain model is trained
two ways: Adam over everything (dense embedding gradients, as FuxiCTR does) and
``sparse=True`` bags with ``SparseAdam`` + Adam for the MLPs (the best plain-PyTorch option).

Usage: ``python -m recsys.training.bench.train_speed [--rows 200000] [--batch 2048] [--steps 60] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from recsys.config import ModelConfig, TrainingConfig
from recsys.data.batch import Batch, BatchLayout, ParquetBatchReader
from recsys.embeddings import MethodContext, build_method
from recsys.features import load_dataset_spec
from recsys.models import build_model
from recsys.models.reference import ReferenceDLRM
from recsys.models.train import TrainModel
from recsys.training.distributed import ensure_process_group, shard

OUT = Path("bench_out")


def _time(step: Callable[[Batch], None], batches: list[Batch], steps: int, warmup: int = 5) -> float:
    for b in batches[:warmup]:
        step(b)
    start = time.perf_counter()
    n = 0
    for i in range(steps):
        b = batches[i % len(batches)]
        step(b)
        n += len(b)
    return n / (time.perf_counter() - start)


def _torchrec_step(spec, model_cfg: ModelConfig) -> Callable[[Batch], None]:
    torch.manual_seed(0)
    method = build_method("full", MethodContext.from_spec(spec, model_cfg.embedding_dim))
    sharded = shard(TrainModel(build_model(model_cfg, method, len(spec.dense_fields))), method, TrainingConfig())

    def step(batch: Batch) -> None:
        loss, _ = sharded.module(batch)
        sharded.optimizer.zero_grad()
        loss.backward()
        sharded.optimizer.step()

    return step


def _plain_step(spec, model_cfg: ModelConfig, sparse: bool) -> Callable[[Batch], None]:
    torch.manual_seed(0)
    method = build_method("full", MethodContext.from_spec(spec, model_cfg.embedding_dim))
    model = ReferenceDLRM(method.embedding_bag_configs(), len(spec.dense_fields), model_cfg.embedding_dim, model_cfg.dense_arch, model_cfg.over_arch)
    if sparse:
        for bag in model.bags:
            bag.sparse = True
        bag_params = [p for bag in model.bags for p in bag.parameters()]
        ids = {id(p) for p in bag_params}
        optimizers = [torch.optim.SparseAdam(bag_params, lr=1e-3), torch.optim.Adam([p for p in model.parameters() if id(p) not in ids], lr=1e-3)]
    else:
        optimizers = [torch.optim.Adam(model.parameters(), lr=1e-3)]
    bce = torch.nn.BCEWithLogitsLoss()

    def step(batch: Batch) -> None:
        loss = bce(model(batch.dense_features, batch.sparse_features), batch.labels)
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()

    return step


def measure(data: Path, batch: int = 2048, steps: int = 60, rows: int = 200_000) -> dict:
    """TorchRec DLRM-``full`` against the plain-PyTorch DLRMs on ``data`` (generated if missing): samples/s and ratios."""
    if not (data / "dataset.json").exists():
        from recsys.data.synthetic import generate

        generate(data, rows=rows, profile="criteo", seed=0)
    spec = load_dataset_spec(data)
    batches = list(ParquetBatchReader(data, "train", BatchLayout.from_spec(spec, "index"), batch, drop_last=True))[:30]
    model_cfg = ModelConfig()
    started = ensure_process_group()
    results = {
        "torchrec_fused": _time(_torchrec_step(spec, model_cfg), batches, steps),
        "plain_adam_dense_grads": _time(_plain_step(spec, model_cfg, sparse=False), batches, steps),
        "plain_sparse_adam": _time(_plain_step(spec, model_cfg, sparse=True), batches, steps),
    }
    if started:
        dist.destroy_process_group()
    return {
        "rows": spec.splits["train"].rows,
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "samples_per_s": results,
        "ratio_vs_plain_adam": results["torchrec_fused"] / results["plain_adam_dense_grads"],
        "ratio_vs_plain_sparse_adam": results["torchrec_fused"] / results["plain_sparse_adam"],
        "full_table_mb": MethodContext.from_spec(spec, model_cfg.embedding_dim).full_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/bench_speed", help="dataset folder (generated if missing)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = measure(Path(args.data), args.batch, args.steps, args.rows)
    for name, rate in report["samples_per_s"].items():
        print(f"{name:24s} {rate:>10,.0f} samples/s")
    print(f"ratio torchrec/plain (Adam, dense grads): {report['ratio_vs_plain_adam']:.2f}x")
    print(f"ratio torchrec/plain (SparseAdam):        {report['ratio_vs_plain_sparse_adam']:.2f}x")
    OUT.mkdir(exist_ok=True)
    (OUT / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
