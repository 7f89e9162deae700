"""Quality at equal bytes: ``full`` against ``hash`` and ``unified`` at several compressions.

Every run is ``recsys.training.run.train_experiment`` on ``configs/quickstart.yaml`` with overrides
(tracking off), so the numbers are what ``recsys train`` would give. ``full`` runs once per
model and seed (compression 1); the compressing methods run at every compression. Writes
``bench_out/unified_quality.{csv,md}`` (method, model, compression, achieved bytes, test AUC
mean ± std over seeds, test logloss, oracle gap = oracle test AUC − test AUC) and keeps each
run's folder under ``bench_out/<tag>/``.

Usage:
    python -m bench.unified_quality --data data/synth_1m --generate 1000000 --seeds 0 1
    python -m bench.unified_quality --data data/criteo_sample --models dlrm --compressions 10 100 --set training.epochs=2
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import Any

from recsys.config import load_config
from recsys.runfolder import RunFolder
from recsys.training.run import train_experiment

OUT = Path("bench_out")
COLUMNS = ["method", "model", "compression", "bytes", "achieved_compression", "auc_mean", "auc_std", "logloss_mean", "oracle_gap", "runs"]


def _runs(args: argparse.Namespace) -> list[tuple[str, str, float | None, int]]:
    """(method, model, compression, seed) of every run; ``full`` only uncompressed."""
    runs = []
    for model in args.models:
        for method in args.methods:
            for compression in [None] if method == "full" else args.compressions:
                runs += [(method, model, compression, seed) for seed in args.seeds]
    return runs


def _train(args: argparse.Namespace, method: str, model: str, compression: float | None, seed: int) -> dict[str, Any]:
    name = f"{model}_{method}_{compression or 1:g}x_seed{seed}"
    folder = OUT / args.tag / name
    if RunFolder(folder).metrics.exists() and not args.rerun:
        return RunFolder(folder).read_metrics()
    overrides = [
        f"data.path={args.data}",
        f"model.name={model}",
        f"embedding.method={method}",
        f"training.seed={seed}",
        "tracking.enabled=false",
        "training.progress=false",
        *args.set,
    ]
    if compression is not None:
        overrides.append(f"embedding.compression={compression}")
    return train_experiment(load_config(args.config, overrides), folder)


def _summarise(results: list[tuple[tuple[str, str, float | None, int], dict[str, Any]]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, float | None], list[dict[str, Any]]] = {}
    for (method, model, compression, _), metrics in results:
        groups.setdefault((method, model, compression), []).append(metrics)
    rows = []
    for (method, model, compression), runs in groups.items():
        aucs = [r["test_auc"] for r in runs]
        gaps = [r["oracle_test_auc"] - r["test_auc"] for r in runs if "oracle_test_auc" in r]
        rows.append(
            {
                "method": method,
                "model": model,
                "compression": compression or 1,
                "bytes": runs[0]["embedding_bytes"],
                "achieved_compression": round(runs[0]["compression_ratio"], 2),
                "auc_mean": statistics.mean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "logloss_mean": statistics.mean(r["test_logloss"] for r in runs),
                "oracle_gap": statistics.mean(gaps) if gaps else float("nan"),
                "runs": len(runs),
            }
        )
    return sorted(rows, key=lambda r: (r["model"], r["compression"], r["method"]))


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | model | compression | bytes | test AUC | test logloss | oracle gap | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['model']} | {r['compression']:g}× ({r['achieved_compression']:g}×) | {r['bytes']:,} "
        f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['logloss_mean']:.4f} | {r['oracle_gap']:.4f} | {r['runs']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (holds dataset.json)")
    parser.add_argument("--generate", type=int, default=None, help="first generate this many synthetic criteo rows there")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--methods", nargs="+", default=["full", "hash", "unified"])
    parser.add_argument("--models", nargs="+", default=["dlrm", "dcnv2"])
    parser.add_argument("--compressions", nargs="+", type=float, default=[10, 100, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides, e.g. training.epochs=2")
    parser.add_argument("--rerun", action="store_true", help="retrain runs that already have metrics")
    parser.add_argument("--tag", default="unified_quality", help="name of the output files")
    args = parser.parse_args()
    if args.generate and not (Path(args.data) / "dataset.json").exists():
        from recsys.data.synthetic import generate

        generate(Path(args.data), rows=args.generate, profile="criteo", seed=0, progress=False)
    results = []
    for run in _runs(args):
        metrics = _train(args, *run)
        print(f"{run}: test AUC {metrics['test_auc']:.4f}, {metrics['embedding_bytes']:,} bytes", flush=True)
        results.append((run, metrics))
    rows = _summarise(results)
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{args.tag}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = _markdown(rows)
    (OUT / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
