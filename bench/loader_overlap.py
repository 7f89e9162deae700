"""End-to-end train steps with the data loader: inline against the prefetching thread.

``recsys train`` reads each batch (Parquet → ``Batch``) and runs the method's ``prepare`` (e.g.
Unified Embedding's hashing) on a background thread (``recsys.data.prefetch``), so the step no
longer waits for them when a core is free. This times wall-clock milliseconds per step over
whole stretches of an epoch, reading included, for each method in two modes: ``inline`` (read
and prepare on the training thread, as before) and ``prefetched`` (as ``recsys train`` does),
in alternating rounds in one process, with ratios against ``full`` in the same mode.

Usage: ``OMP_NUM_THREADS=1 python -m bench.loader_overlap --data data/synth_1m --methods full,unified``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from recsys.data.batch import Batch, prepared

MODES = ("inline", "prefetched")


def _batches(reader: Any, method: Any, mode: str) -> Iterator[Batch]:
    """An endless stream of prepared train batches (epochs in turn), read as ``mode`` says."""
    epoch = 0
    while True:
        reader.set_epoch(epoch)
        source: Iterable[Batch] = reader if mode == "prefetched" else (prepared(method, b) for b in reader.reader)
        yield from source
        epoch += 1


def measure(data: Path, methods: list[str], compression: float, steps: int, rounds: int, model: str) -> dict[str, Any]:
    import torch.distributed as dist

    from recsys.training.bench.quality import Point, Sweep, SweepSettings
    from recsys.training.bench.step_times import sharded_step
    from recsys.training.distributed import ensure_process_group
    from recsys.training.experiment import Experiment
    from recsys.training.tracking import NullTracker

    sweep = Sweep(SweepSettings(dataset=data, methods=methods, budgets=[compression], model=model))
    started = ensure_process_group()
    streams: dict[tuple[str, str], tuple[Any, Iterator[Batch]]] = {}
    try:
        for name in methods:
            cfg = sweep.config(Point(name, None if name == "full" else compression, 0))
            exp = Experiment(cfg, Path("/tmp/recsys_loader_overlap"), NullTracker())
            method, sharded = exp.build(exp.phases()[0])
            sharded.module.train()
            step = sharded_step(sharded, method, 10_000)
            for mode in MODES:
                streams[(name, mode)] = (step, _batches(exp.reader("train", method), method, mode))
        times: dict[tuple[str, str], list[float]] = {k: [] for k in streams}
        for r in range(rounds + 1):
            for key, (step, stream) in streams.items():
                start = time.perf_counter()
                for batch in islice(stream, steps):
                    step(batch)
                if r:  # the first round warms up
                    times[key].append(1000 * (time.perf_counter() - start) / steps)
        for _, stream in streams.values():
            stream.close()
    finally:
        if started:
            dist.destroy_process_group()
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "steps_per_round": steps,
        "rounds": rounds,
        "model": model,
        "compression": compression,
        "ms_per_step": {f"{n}/{m}": v for (n, m), v in median.items()},
        "ratio_vs_full": {f"{n}/{m}": v / median[("full", m)] for (n, m), v in median.items()},
        "prefetch_speedup": {n: median[(n, "inline")] / median[(n, "prefetched")] for n in methods},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}, methods at {result['compression']:g}×, median of {result['rounds']} alternating rounds of "
        f"{result['steps_per_round']} steps (wall ms per step, reading included)",
        "",
        "| method | inline ms/step | prefetched ms/step | inline / full | prefetched / full | prefetch speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ms, ratio = result["ms_per_step"], result["ratio_vs_full"]
    for name, gain in result["prefetch_speedup"].items():
        lines.append(
            f"| {name} | {ms[name + '/inline']:.1f} | {ms[name + '/prefetched']:.1f} | {ratio[name + '/inline']:.2f}× "
            f"| {ratio[name + '/prefetched']:.2f}× | {gain:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synth_1m"))
    parser.add_argument("--methods", default="full,unified", help="comma-separated; must include full (the baseline)")
    parser.add_argument("--compression", type=float, default=10.0)
    parser.add_argument("--model", default="dlrm")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training step")
    parser.add_argument("--out", type=Path, default=Path("bench_out/loader_overlap"))
    args = parser.parse_args()
    methods = args.methods.split(",")
    if "full" not in methods:
        parser.error("--methods must include full (the baseline)")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    result = measure(args.data, ["full", *[m for m in methods if m != "full"]], args.compression, args.steps, args.rounds, args.model)
    result.update(threads=args.threads, cpus=os.cpu_count(), load_before=load_before, load_after=os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    text = markdown(result) + f"\n{result['cpus']} CPUs, {args.threads} torch thread(s), load before {load_before}, after {result['load_after']}\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
