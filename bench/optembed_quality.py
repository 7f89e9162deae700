"""OptEmbed against ``full`` of the same model: AUC, logloss and bytes per stage, search cost, step time.

Every run is ``recsys.training.run.train_experiment`` on ``configs/quickstart.yaml`` with overrides
(tracking off). OptEmbed's stages are measured by growing the ``phases`` option in one run
folder with ``resume=True``: ``[supernet]`` (the supernet alone), then ``+ search``, then
``+ retrain``; each resumed run skips the finished phases. The budget-aware point
(``embedding.compression`` below 16×, else the ``search_compression`` option: a context budget
must fit the unpruned tables at one dimension, D = 16) reuses the supernet phase of the
unbudgeted run (supernet training does not depend on the budget), then searches and retrains
within the budget; a variant retrains from the supernet's weights instead of the initial ones.
The step-time overhead is measured in one process, alternating steps of ``full`` and the supernet.

Writes ``<out>/results.json`` and ``<out>/results.md``; run folders live under ``<out>/runs``.

Usage:
    PYTHONPATH=. python bench/optembed_quality.py --rows 300000 --out bench_out/optembed
    PYTHONPATH=. python bench/optembed_quality.py --criteo-sample /work/shared/data/criteo_kaggle_sample_10k.tsv
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from recsys.config import load_config
from recsys.embeddings import Phase
from recsys.embeddings.optembed_export import rank_bitmap_bytes
from recsys.features import load_dataset_spec
from recsys.runfolder import RunFolder
from recsys.training.distributed import ensure_process_group
from recsys.training.experiment import Experiment
from recsys.training.run import train_experiment
from recsys.training.tracking import make_tracker

ROOT = Path(__file__).resolve().parents[1]
STAGES = (["supernet"], ["supernet", "search"], ["supernet", "search", "retrain"])


def _overrides(data: Path, method: str, options: dict[str, Any], extra: list[str]) -> list[str]:
    opts = json.dumps(options) if options else "{}"
    return [
        f"data.path={data}",
        "training.progress=false",
        "tracking.enabled=false",
        f"embedding.method={method}",
        f"embedding.options={opts}",
        *extra,
    ]


def run(data: Path, out: Path, method: str, options: dict[str, Any], extra: list[str], resume: bool = False) -> dict[str, Any]:
    """One experiment; its metrics plus wall seconds."""
    cfg = load_config(ROOT / "configs/quickstart.yaml", _overrides(data, method, options, extra))
    start = time.perf_counter()
    metrics = train_experiment(cfg, out, resume=resume)
    return metrics | {"seconds": time.perf_counter() - start}


def _pruned_bytes(state_file: Path, names: list[str]) -> int:
    """Bytes of the supernet served with its row masks at full width (``full`` base: a table per field)."""
    state = load_file(str(state_file))
    total = 0
    for name, d in zip(names, state["dims"].tolist()):
        mask = state[f"row_mask.{name}"]
        kept, rows = int(mask.sum()), mask.numel()
        total += kept * d * 4 + (rank_bitmap_bytes(rows) if kept < rows else 0)
    return total


def _row(name: str, m: dict[str, Any], full: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "run": name,
        "test_auc": m["test_auc"],
        "test_logloss": m["test_logloss"],
        "bytes": m["embedding_bytes"],
        "bytes_vs_full": m["embedding_bytes"] / full["embedding_bytes"],
        "auc_vs_full": m["test_auc"] - full["test_auc"],
        "seconds": m["seconds"],
        **extra,
    }


def staged(data: Path, out: Path, options: dict[str, Any], extra: list[str], full: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """Supernet alone, after search, after retrain (one folder, growing ``phases``)."""
    rows = []
    for phases in STAGES:
        m = run(data, out, "optembed", options | {"phases": phases}, extra, resume=True)
        stage = phases[-1]
        info: dict[str, Any] = {}
        if stage == "supernet":
            names = [f.name for f in load_dataset_spec(data).sparse_fields]
            info["row_pruned_bytes"] = _pruned_bytes(RunFolder(out).phase("supernet").state, names)
            info["valid_auc"] = m["valid_auc"]
        if stage == "search":
            s = m["phases"]["search"]["search"]
            info.update(
                search_seconds=s["seconds"],
                evaluations=s["evaluations"],
                cache_hits=s["cache_hits"],
                dims=s["dims"],
                sparsity=s["sparsity"],
                search_valid_auc=s["valid_auc"],
            )
        rows.append(_row(f"{label}: after {stage}" if stage != "supernet" else f"{label}: supernet alone", m, full, **info))
    return rows


def step_times(data: Path, extra: list[str], steps: int = 40) -> dict[str, float]:
    """Median train-step seconds of ``full`` and of the supernet, alternating in one process."""
    started = ensure_process_group()
    built = {}
    for method, phase in (("full", None), ("optembed", Phase("supernet"))):
        cfg = load_config(ROOT / "configs/quickstart.yaml", _overrides(data, method, {}, extra))
        exp = Experiment(cfg, Path("/tmp/optembed_bench_steps"), make_tracker(cfg.tracking, tags={}))
        m, sharded = exp.build(phase)
        batches = [b for _, b in zip(range(8), exp.reader("train", m))]
        built[method] = (m, sharded, batches)
    times: dict[str, list[float]] = {k: [] for k in built}
    for i in range(steps):
        for k, (m, sharded, batches) in built.items():
            sharded.module.train()
            start = time.perf_counter()
            loss, _ = sharded.module(batches[i % len(batches)])
            sharded.optimizer.zero_grad()
            loss.backward()
            sharded.optimizer.step()
            m.on_train_step(i)
            times[k].append(time.perf_counter() - start)
    if started:
        dist.destroy_process_group()
    med = {k: statistics.median(v[5:]) for k, v in times.items()}
    return {"full_step_s": med["full"], "supernet_step_s": med["optembed"], "ratio": med["optembed"] / med["full"]}


def bench(data: Path, out: Path, options: dict[str, Any], extra: list[str], compressions: list[float]) -> dict[str, Any]:
    full = run(data, out / "runs/full", "full", {}, extra, resume=True)
    rows = [_row("full", full, full)]
    rows += staged(data, out / "runs/optembed", options, extra, full, "optembed")
    inherit_dir = out / "runs/optembed_inherit"  # retrain from the supernet's weights (Hetu's variant)
    source, inherit = RunFolder(out / "runs/optembed"), RunFolder(inherit_dir)
    for phase in ("supernet", "search"):
        shutil.copytree(source.phase(phase).root, inherit.phase(phase).root, dirs_exist_ok=True)
    shutil.copy(source.initial, inherit.initial)
    m = run(data, inherit_dir, "optembed", options | {"retrain_weights": "inherit"}, extra, resume=True)
    rows.append(_row("optembed: after retrain (inherited weights)", m, full))
    for compression in compressions:
        budget_dir = out / f"runs/optembed_{compression:g}x"
        budget_run = RunFolder(budget_dir)
        shutil.copytree(source.phase("supernet").root, budget_run.phase("supernet").root, dirs_exist_ok=True)
        shutil.copy(source.initial, budget_run.initial)
        by_ctx = compression < 16  # a context budget must fit the unpruned tables at one dimension (D = 16)
        budget = [f"embedding.compression={compression}"] if by_ctx else []
        opts = options if by_ctx else options | {"search_compression": compression}
        try:
            m = run(data, budget_dir, "optembed", opts, [*extra, *budget], resume=True)
        except ValueError as exc:  # the kept rows at one dimension are over the budget
            print(f"{compression:g}x budget: {exc}")
            continue
        s = m["phases"]["search"]["search"]
        rows.append(
            _row(
                f"optembed {compression:g}x budget: after retrain",
                m,
                full,
                search_seconds=s["seconds"],
                dims=s["dims"],
                budget_bytes=int(full["embedding_bytes"] / compression),
            )
        )
    return {"rows": rows, "step_time": step_times(data, extra)}


def _markdown(results: dict[str, Any]) -> str:
    lines = []
    for dataset, res in results.items():
        lines += [
            f"### {dataset}",
            "",
            "| run | test AUC | Δ AUC vs full | test logloss | bytes | bytes / full | wall s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['run']} | {r['test_auc']:.4f} | {r['auc_vs_full']:+.4f} | {r['test_logloss']:.4f} | "
                f"{r['bytes']:,} | {r['bytes_vs_full']:.3f} | {r['seconds']:.0f} |"
            )
        st = res["step_time"]
        lines += [
            "",
            f"step time: full {st['full_step_s'] * 1e3:.1f} ms, supernet {st['supernet_step_s'] * 1e3:.1f} ms (ratio {st['ratio']:.2f})",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/optembed_criteo"), help="synthetic dataset folder")
    parser.add_argument("--rows", type=int, default=300_000, help="rows to generate when --data is missing")
    parser.add_argument("--criteo-sample", type=Path, default=None, help="Criteo TSV sample to convert and run too")
    parser.add_argument("--out", type=Path, default=Path("bench_out/optembed"))
    parser.add_argument("--compression", type=float, nargs="*", default=[10.0], help="budgets of the budget-aware points")
    parser.add_argument("--options", type=json.loads, default={}, help="optembed options (JSON)")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    args = parser.parse_args()
    torch.manual_seed(0)
    if not (args.data / "dataset.json").exists():
        from recsys.data.synthetic import generate

        generate(args.data, rows=args.rows, profile="criteo", seed=0, progress=False)
    source = json.loads((args.data / "dataset.json").read_text()).get("source", "synthetic")
    results = {f"{source} ({args.data.name})": bench(args.data, args.out / "synthetic", args.options, args.set, args.compression)}
    if args.criteo_sample is not None and args.criteo_sample.exists():
        from recsys.data.convert import convert

        sample = args.out / "criteo_sample_data"
        if not (sample / "dataset.json").exists():
            convert("criteo", args.criteo_sample, sample, progress=False)
        results["Criteo sample"] = bench(sample, args.out / "criteo_sample", args.options, args.set, args.compression)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(_markdown(results) + "\n")
    print(_markdown(results))


if __name__ == "__main__":
    main()
