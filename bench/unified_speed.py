"""Training step time of DLRM-``unified`` against DLRM-``full`` with the same total rows, in one process.

``full`` has one table per feature (Σ_f card_f rows of width D); ``unified`` gets one shared
table of ``B = Σ_f card_f`` rows with its default chunks (D/2 wide, 2 probes per feature, so
twice the lookups at half the width). Both are sharded and trained exactly as ``recsys train``
does (DMP, fused row-wise Adagrad), on the same pre-read batches, passed through the method's
``prepare`` as the training loader does on its own thread (``unified``'s hashing; its cost per
batch is reported apart, ``prepare_ms``; reading excluded).
Timing alternates the two for ``--rounds`` short rounds and reports the median and the minimum
round of each (the minimum is the robust figure on a shared, busy machine); the ratio
unified / full is the number to watch (target ≤ 1.15).

Usage: ``python -m bench.unified_speed [--data data/unified_bench_300k] [--rows 300000] [--steps 40]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recsys.config import ModelConfig, TrainingConfig
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.embeddings import EmbeddingMethod, MethodContext, build_method
from recsys.features import DatasetSpec, load_dataset_spec
from recsys.models import build_model
from recsys.models.train import TrainModel
from recsys.training.bench.step_times import Step, alternate, prepared_batches, sharded_step
from recsys.training.distributed import ensure_process_group, shard

OUT = Path("bench_out")


def _stepper(spec: DatasetSpec, method_name: str, options: dict[str, Any]) -> tuple[Step, EmbeddingMethod]:
    """One optimizer step of a freshly built, sharded DLRM over ``method_name``, and the method."""
    torch.manual_seed(0)
    model_cfg = ModelConfig()
    method = build_method(method_name, MethodContext.from_spec(spec, model_cfg.embedding_dim), options)
    sharded = shard(TrainModel(build_model(model_cfg, method, len(spec.dense_fields))), method, TrainingConfig())
    return sharded_step(sharded, method, total_steps=10_000), method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/unified_bench_300k", help="dataset folder (generated if missing)")
    parser.add_argument("--rows", type=int, default=300_000, help="synthetic criteo rows when generating")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "dataset.json").exists():
        from recsys.data.synthetic import generate

        generate(data, rows=args.rows, profile="criteo", seed=0, progress=False)
    spec = load_dataset_spec(data)
    total_rows = sum(int(f.cardinality or 1) for f in spec.sparse_fields)
    setups = {"full": ("full", {}, "index"), "unified": ("unified", {"rows": total_rows}, "raw")}
    started = ensure_process_group()
    steps, batches, prepare_ms = {}, {}, {}
    for key, (name, options, scheme) in setups.items():
        reader = ParquetBatchReader(data, "train", BatchLayout.from_spec(spec, scheme), args.batch, drop_last=True)
        steps[key], method = _stepper(spec, name, options)
        batches[key], prepare_ms[key] = prepared_batches(method, [b for _, b in zip(range(20), reader)])
    timing = alternate({k: (steps[k], batches[k]) for k in setups}, args.steps, args.rounds, baseline="full")
    if started:
        dist.destroy_process_group()
    report = {
        "total_rows": total_rows,
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "step_ms_median": timing["step_ms_median"],
        "step_ms_min": timing["step_ms_min"],
        "prepare_ms": prepare_ms,
        "ratio_unified_over_full_median": timing["ratio_median"]["unified"],
        "ratio_unified_over_full_min": timing["ratio_min"]["unified"],
    }
    for key in setups:
        print(
            f"{key:8s} median {timing['step_ms_median'][key]:8.2f} ms/step, min {timing['step_ms_min'][key]:8.2f} ms/step, "
            f"loader prepare {prepare_ms[key]:.2f} ms/batch"
        )
    print(
        f"ratio unified/full: median {report['ratio_unified_over_full_median']:.3f}x, "
        f"min {report['ratio_unified_over_full_min']:.3f}x (target <= 1.15)"
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "unified_speed.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
