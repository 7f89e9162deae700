"""Quality and step time of ``dsl`` against ``full``, a static random mask (``fix``) and on ``unified``.

Quality: every run is ``recsys.training.run.train_experiment`` on ``configs/quickstart.yaml`` with
overrides (tracking off): ``full``; ``dsl`` at each density, dynamic and ``mode=fix``; ``dsl``
on a ``unified`` base (``base_compression``) against plain ``unified`` at the same bytes.
Writes ``bench_out/dsl_quality.{json,md}`` (test AUC, logloss, served bytes, compression) and
``bench_out/dsl_speed.json``.

Step time: DLRM-``full`` and DLRM-``dsl`` (``regrow`` accumulated and batch) built, sharded and stepped as ``recsys train`` does
(DMP, fused row-wise Adagrad, ``on_train_begin`` / ``on_train_step`` included, so prune/regrow
every ``update_every`` steps is amortised), on the same pre-read batches, alternating for
step by step in this process; the ratio of mean step times over whole update intervals is
the amortised overhead.

Usage:
    python -m bench.dsl_quality --data data/dsl_bench_300k --generate 300000 --set training.epochs=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import yaml

from recsys.config import ModelConfig, TrainingConfig, load_config
from recsys.data.batch import Batch, BatchLayout, ParquetBatchReader
from recsys.embeddings import MethodContext, build_method
from recsys.features import DatasetSpec, load_dataset_spec
from recsys.models import build_model
from recsys.models.train import TrainModel
from recsys.runfolder import RunFolder
from recsys.training.bench.step_times import sharded_step
from recsys.training.distributed import ensure_process_group, shard
from recsys.training.run import train_experiment

OUT = Path("bench_out")
Run = tuple[str, str, dict[str, Any], int | None]  # (label, method, options, budget bytes)


def _runs(args: argparse.Namespace, spec: DatasetSpec) -> list[Run]:
    runs: list[Run] = [("full", "full", {}, None)]
    for density in args.densities:
        for mode in ("dynamic", "fix"):
            options = {"density": density, "mode": mode, "update_every": args.update_every}
            runs.append((f"dsl-{mode} d={density:g}", "dsl", options, None))
    ctx = MethodContext.from_spec(spec, ModelConfig().embedding_dim)
    for density in args.unified_densities:
        options = {"density": density, "base": "unified", "base_compression": args.unified_base_compression, "update_every": args.update_every}
        nbytes = build_method("dsl", ctx, options).memory_bytes()
        runs.append((f"dsl-on-unified {args.unified_base_compression:g}x d={density:g}", "dsl", options, None))
        runs.append(("unified at the same bytes", "unified", {}, nbytes))
    return runs


def _same_config(folder: Path, config: dict[str, Any]) -> bool:
    """Whether the run in ``folder`` was trained with ``config`` (another seed, dataset or option retrains)."""
    written = RunFolder(folder).config
    return written.exists() and yaml.safe_load(written.read_text()) == config


def _train(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    label, method, options, budget = run
    folder = OUT / "dsl_quality" / label.replace(" ", "_").replace("=", "")
    overrides = [f"data.path={args.data}", f"embedding.method={method}", "tracking.enabled=false", "training.progress=false", *args.set]
    overrides += [f"embedding.options.{k}={v}" for k, v in options.items()]
    if budget is not None:
        overrides.append(f"embedding.budget_bytes={budget}")
    cfg = load_config(args.config, overrides)
    run_folder = RunFolder(folder)
    if run_folder.metrics.exists() and not args.rerun and _same_config(folder, cfg.model_dump(mode="json")):
        return run_folder.read_metrics()
    start = time.perf_counter()
    metrics = train_experiment(cfg, folder)  # a new run in a used folder clears the old one first
    metrics["wall_s"] = time.perf_counter() - start
    run_folder.write_metrics(metrics)
    return metrics


def _stepper(spec: DatasetSpec, method_name: str, options: dict[str, Any], total: int) -> Callable[[Batch], None]:
    """One optimizer step (with the method's per-step hook) of a freshly built, sharded DLRM."""
    torch.manual_seed(0)
    model_cfg = ModelConfig()
    method = build_method(method_name, MethodContext.from_spec(spec, model_cfg.embedding_dim), options)
    sharded = shard(TrainModel(build_model(model_cfg, method, len(spec.dense_fields))), method, TrainingConfig())
    return sharded_step(sharded, method, total)


def _speed(args: argparse.Namespace, spec: DatasetSpec) -> dict[str, Any]:
    """Alternate one step of each model (so load on a shared machine hits both alike); the
    amortised ratio is of mean step times over whole update intervals, updates included."""
    dsl = {"density": args.speed_density, "update_every": args.speed_update_every}
    setups = {"full": ("full", {}), "dsl": ("dsl", dsl), "dsl-batch": ("dsl", {**dsl, "regrow": "batch"})}
    reader = ParquetBatchReader(args.data, "train", BatchLayout.from_spec(spec, "index"), args.batch, drop_last=True)
    batches = [b for _, b in zip(range(20), reader)]
    warm, total = 10, 10 + args.speed_steps
    steps = {key: _stepper(spec, name, options, total) for key, (name, options) in setups.items()}
    times: dict[str, list[float]] = {key: [] for key in setups}
    for i in range(total):
        for key, step in steps.items():
            start = time.perf_counter()
            step(batches[i % len(batches)])
            if i >= warm:
                times[key].append(time.perf_counter() - start)
    mean = {k: statistics.mean(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": args.batch,
        "timed_steps": args.speed_steps,
        "threads": torch.get_num_threads(),
        "dsl_options": setups["dsl"][1],
        "mean_step_ms": {k: 1000 * v for k, v in mean.items()},
        "median_step_ms": {k: 1000 * v for k, v in median.items()},
        "amortised_ratio_over_full": {k: mean[k] / mean["full"] for k in setups},
        "median_ratio_over_full": {k: median[k] / median["full"] for k in setups},
    }


def _markdown(rows: list[dict[str, Any]], speed: dict[str, Any] | None) -> str:
    lines = ["| run | test AUC | test logloss | served bytes | compression | wall s |", "|---|---:|---:|---:|---:|---:|"] if rows else []
    lines += [
        f"| {r['run']} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | {r['embedding_bytes']:,} | {r['compression_ratio']:.2f}× | {r.get('wall_s', float('nan')):.0f} |"
        for r in rows
    ]
    if speed is not None:
        lines.append(
            f"\nStep time (batch {speed['batch']}, {speed['timed_steps']} steps alternating, {speed['threads']} thread(s), dsl {speed['dsl_options']}):\n"
        )
        lines += ["| model | mean ms | median ms | amortised ratio | median ratio |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {k} | {speed['mean_step_ms'][k]:.1f} | {speed['median_step_ms'][k]:.1f} | {speed['amortised_ratio_over_full'][k]:.3f}× | {speed['median_ratio_over_full'][k]:.3f}× |"
            for k in speed["mean_step_ms"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (holds dataset.json)")
    parser.add_argument("--generate", type=int, default=None, help="first generate this many synthetic criteo rows there")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--densities", nargs="*", type=float, default=[0.5, 0.2, 0.1, 0.05])
    parser.add_argument("--unified-densities", nargs="*", type=float, default=[0.2])
    parser.add_argument("--unified-base-compression", type=float, default=2.0)
    parser.add_argument("--update-every", type=int, default=20, help="ΔT of the quality runs")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides, e.g. training.epochs=2")
    parser.add_argument("--rerun", action="store_true", help="retrain runs that already have metrics")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--batch", type=int, default=2048, help="batch of the step-time measurement")
    parser.add_argument("--speed-steps", type=int, default=200, help="timed steps (a multiple of the update interval)")
    parser.add_argument("--speed-density", type=float, default=0.1)
    parser.add_argument("--speed-update-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a shared machine: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.generate and not (Path(args.data) / "dataset.json").exists():
        from recsys.data.synthetic import generate

        generate(Path(args.data), rows=args.generate, profile="criteo", seed=0, progress=False)
    spec = load_dataset_spec(args.data)
    rows = []
    if not args.skip_quality:
        for run in _runs(args, spec):
            metrics = _train(args, run)
            print(f"{run[0]}: test AUC {metrics['test_auc']:.4f}, {metrics['embedding_bytes']:,} bytes", flush=True)
            rows.append({"run": run[0], "method": run[1], "options": run[2], **metrics})
    speed = None
    if not args.skip_speed:
        started = ensure_process_group()
        speed = _speed(args, spec)
        if started:
            dist.destroy_process_group()
    OUT.mkdir(exist_ok=True)
    if rows:
        (OUT / "dsl_quality.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    if speed is not None:
        (OUT / "dsl_speed.json").write_text(json.dumps(speed, indent=2) + "\n")
    table = _markdown(rows, speed)
    (OUT / ("dsl_quality.md" if rows else "dsl_speed.md")).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
