"""Distributed training on this machine: Ray Train scaling, the Ray Data input path, MLflow overhead.

1. ``scaling``: end-to-end training samples/s (wall clock of the logged windows, input
   included; rank 0's windows × workers) of DLRM-``full`` with 1 and 2 Ray Train workers,
   the same per-worker batch; the ratio is the scaling.
2. ``input``: rows/s of one pass over the train split as ``Batch`` objects, in-process
   (``ParquetBatchReader``, shuffled) against Ray Data (``read_parquet`` → ``EqualSplit`` →
   ``RayShardReader``, one shard); and whether two passes of an epoch give the same batches.
3. ``mlflow``: the time of one ``log_metrics`` call (embedded sqlite store and a local
   ``mlflow server``) as a share of the training time between two logged steps.

Usage: ``python -m bench.ray_bench [--rows 200000] [--batch 1024] [--log-every 50]``
(results in ``bench_out/ray_bench.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _log_cost(uri: str, calls: int = 100) -> float:
    from training.tracking import MlflowTracker

    tracker = MlflowTracker(TrackingConfig(tracking_uri=uri, experiment="bench"))
    tracker.log_metrics({"warm": 0.0}, 0)
    start = time.perf_counter()
    for step in range(calls):
        tracker.log_metrics({"train_loss": 0.5, "train_samples_per_s": 1e4}, step)
    tracker.close()
    return (time.perf_counter() - start) / calls


def _mlflow(work: Path, step_s: float, log_every: int) -> dict[str, float]:
    from training.distributed import free_port
    from training.mlflow_server import LocalServer

    server = LocalServer(free_port(), work / "server.db").start()
    try:
        costs = {"sqlite": _log_cost(f"sqlite:///{work}/log.db"), "server": _log_cost(server.uri)}
    finally:
        server.stop()
    out: dict[str, float] = {"step_s": step_s, "log_every": log_every}
    for name, cost in costs.items():
        out[f"{name}_call_ms"] = 1000 * cost
        out[f"{name}_overhead_pct"] = 100 * cost / (log_every * step_s)
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
        results["mlflow"] = _mlflow(work, args.batch / one["compute_samples_per_s"], args.log_every)
    (OUT / "ray_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"scaling 1→2 workers: {results['scaling']['ratio']:.2f}x; Ray input / in-process: {results['input']['ray_vs_in_process']:.2f}; "
          f"MLflow overhead: sqlite {results['mlflow']['sqlite_overhead_pct']:.2f}%, server {results['mlflow']['server_overhead_pct']:.2f}%")


if __name__ == "__main__":
    main()
