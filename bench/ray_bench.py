"""Distributed training on this machine: Ray Train scaling, the Ray Data input path, MLflow overhead.

1. ``scaling``: end-to-end training samples/s (wall clock of the logged windows, input
   included; rank 0's windows × workers) of DLRM-``full`` with 1 and 2 Ray Train workers,
   the same per-worker batch; the ratio is the scaling.
2. ``input``: rows/s of one pass over the train split as ``Batch`` objects, in-process
   (``ParquetBatchReader``, shuffled) against Ray Data (``read_parquet`` → ``EqualSplit`` →
   ``RayShardReader``, one shard); and whether two passes of an epoch give the same batches.
3. ``mlflow``: in-process DMP training steps with step metrics logged every ``--log-every``
   steps (embedded sqlite store; a local ``mlflow server``) against no tracking, interleaved
   rounds: the slowdown, the training thread's cost per call (an enqueue), and what a
   synchronous call would cost (``*_sync_overhead_pct``).

Usage: ``python -m bench.ray_bench [--rows 200000] [--batch 1024] [--log-every 50]``
(results in ``bench_out/ray_bench.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from recsys.config import TrackingConfig, load_config
from recsys.data.batch import BatchLayout, ParquetBatchReader
from recsys.features import load_dataset_spec

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("bench_out")


def _data(rows: int) -> Path:
    from recsys.data.synthetic import generate

    folder = OUT / f"ray_bench_{rows}"
    if not (folder / "dataset.json").exists():
        generate(folder, rows=rows, profile="small", seed=0, progress=False, overwrite=True)
    return folder.resolve()


def _scaling(data: Path, workers: int, batch: int, work: Path) -> dict[str, float]:
    import mlflow

    from training.ray_trainer import train_distributed

    db = f"sqlite:///{work}/w{workers}.db"
    cfg = load_config(ROOT / "configs/quickstart.yaml", [
        f"data.path={data}", "training.epochs=1", f"training.batch_size={batch}", "training.progress=false",
        "training.log_every=10", f"training.workers={workers}", f"tracking.tracking_uri={db}", "tracking.system_metrics=false",
    ])
    start = time.perf_counter()
    metrics = train_distributed(cfg, work / f"run{workers}")
    client = mlflow.MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    windows = [m.value for m in client.get_metric_history(run.info.run_id, "train_samples_per_s")][1:]  # first: warm-up
    return {
        "samples_per_s": workers * statistics.median(windows), "compute_samples_per_s": workers * metrics["train_samples_per_s"],
        "wall_s": time.perf_counter() - start, "test_auc": metrics["test_auc"],
    }


def _input(data: Path, batch: int) -> dict[str, Any]:
    from training.ray_data import RayShardReader, make_data_config, read_split, split_rows

    spec = load_dataset_spec(data)
    layout = BatchLayout.from_spec(spec, "index")
    reader = ParquetBatchReader(data, "train", layout, batch, shuffle=True, seed=0)
    start = time.perf_counter()
    rows = sum(len(b) for b in reader)
    local = rows / (time.perf_counter() - start)
    n = split_rows(spec, "train", None)
    start = time.perf_counter()
    (shard,) = [parts["train"] for parts in make_data_config({"train": n}, {"train"}, 0).configure({"train": read_split(data, spec, "train", layout, None)}, 1, None, None)]
    split_s = time.perf_counter() - start
    ray_reader = RayShardReader(shard, layout, batch, n, 0, 1, train=True, seed=0)
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        sums = [float(b.labels.sum()) + float(b.dense_features[:, 0].sum()) for b in ray_reader]
        passes.append((n / (time.perf_counter() - start), sums))
    return {
        "in_process_rows_per_s": local, "ray_rows_per_s": passes[1][0], "ray_first_pass_rows_per_s": passes[0][0],
        "ray_split_s": split_s, "ray_vs_in_process": passes[1][0] / local, "reproducible": passes[0][1] == passes[1][1],
    }


def _steps(data: Path, batch: int) -> tuple[Callable[[int], float], list[Any]]:
    """One in-process DMP training step of DLRM-``full`` on pre-built batches, and the batches."""
    from recsys.config import ModelConfig, TrainingConfig
    from recsys.embeddings import MethodContext, build_method
    from recsys.models import build_model
    from recsys.models.train import TrainModel
    from training.distributed import ensure_process_group, shard

    ensure_process_group()
    spec = load_dataset_spec(data)
    method = build_method("full", MethodContext.from_spec(spec, 16))
    sharded = shard(TrainModel(build_model(ModelConfig(), method, len(spec.dense_fields))), method, TrainingConfig())
    batches = list(itertools.islice(iter(ParquetBatchReader(data, "train", BatchLayout.from_spec(spec, "index"), batch)), 20))

    def step(i: int) -> float:
        loss, _ = sharded.module(batches[i % len(batches)])
        sharded.optimizer.zero_grad()
        loss.backward()
        sharded.optimizer.step()
        return float(loss.detach())

    return step, batches


def _mlflow(data: Path, work: Path, batch: int, log_every: int, steps: int = 600, rounds: int = 3) -> dict[str, Any]:
    """Training time with metrics logged every ``log_every`` steps against none (A/B, interleaved),
    and the cost of one call on the training thread (enqueue) and in the background sender."""
    from training.distributed import free_port
    from training.mlflow_server import LocalServer
    from training.tracking import MlflowTracker, NullTracker

    step, _ = _steps(data, batch)
    for i in range(20):
        step(i)
    server = LocalServer(free_port(), work / "server.db").start()
    out: dict[str, Any] = {"log_every": log_every, "steps": steps}
    try:
        uris = {"sqlite": f"sqlite:///{work}/log.db", "server": server.uri}
        times: dict[str, list[float]] = {"none": [], **{k: [] for k in uris}}
        for _ in range(rounds):
            for name in times:
                tracker = NullTracker() if name == "none" else MlflowTracker(TrackingConfig(tracking_uri=uris[name], experiment="bench"))
                start = time.perf_counter()
                enqueue = 0.0
                for i in range(steps):
                    loss = step(i)
                    if (i + 1) % log_every == 0:
                        t = time.perf_counter()
                        tracker.log_metrics({"train_loss": loss, "train_samples_per_s": 1.0}, i + 1)
                        enqueue += time.perf_counter() - t
                times[name].append(time.perf_counter() - start)
                out.setdefault(f"{name}_enqueue_ms", 1000 * enqueue / (steps // log_every))
                if isinstance(tracker, MlflowTracker):
                    t = time.perf_counter()
                    for i in range(20):
                        tracker._submit({"op": "metrics", "run": tracker.run_id, "metrics": {"x": 1.0}, "step": i, "ts": 0})
                    out.setdefault(f"{name}_send_ms", 1000 * (time.perf_counter() - t) / 20)
                tracker.close()
    finally:
        server.stop()
    base = statistics.median(times["none"])
    out["step_ms"] = 1000 * base / steps
    for name in uris:
        out[f"{name}_overhead_pct"] = 100 * (statistics.median(times[name]) - base) / base
        out[f"{name}_sync_overhead_pct"] = 100 * out[f"{name}_send_ms"] / (log_every * out["step_ms"])
    out["round_spread_pct"] = 100 * (max(times["none"]) - min(times["none"])) / base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1024, help="rows per worker step")
    parser.add_argument("--log-every", type=int, default=50, help="training.log_every assumed for the MLflow overhead")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from training.ray_trainer import init_ray

    OUT.mkdir(exist_ok=True)
    data = _data(args.rows)
    init_ray()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "rows": args.rows, "batch_per_worker": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["input"] = _input(data, args.batch)
        one, two = _scaling(data, 1, args.batch, work), _scaling(data, 2, args.batch, work)
        results["scaling"] = {"1_worker": one, "2_workers": two, "ratio": two["samples_per_s"] / one["samples_per_s"]}
        results["mlflow"] = _mlflow(data, work, args.batch, args.log_every)
    (OUT / "ray_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"scaling 1→2 workers: {results['scaling']['ratio']:.2f}x; Ray input / in-process: {results['input']['ray_vs_in_process']:.2f}; "
          f"MLflow overhead: sqlite {results['mlflow']['sqlite_overhead_pct']:.2f}%, server {results['mlflow']['server_overhead_pct']:.2f}%")


if __name__ == "__main__":
    main()
