"""``recsys bench speed``: one speed report (JSON + Markdown) from the benchmark scripts' functions.

1. Step time of every benchmarked method (``recsys.training.bench.methods``, the names of
   ``recsys bench quality``; at ``--compression``) against ``full``, all built and stepped in
   this process as ``recsys train`` does (``recsys.training.bench.step_times``: the method's first phase, DMP,
   fused optimizer, per-step hooks), in alternating rounds; ratios of the median and minimum round.
2. TorchRec DLRM-``full`` against plain-PyTorch DLRMs (``recsys.training.bench.train_speed.measure``).
3. Conversion (rows/s, peak RSS) and Parquet → batch throughput (``recsys.training.bench.convert_bench``).
4. With ``--serving``: ``bench.serving_bench`` in a child process (it starts servers and Redis);
   its in-process lookup rates and HTTP/Redis figures are summarised.

Writes ``<out>/speed.json`` and ``<out>/speed.md``.

Usage: ``python -m recsys.training.bench.speed_report [--data data/bench_speed] [--methods full,hash,...] [--serving]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_METHODS = "full,hash,qr,unified,optembed,dsl,unified+optembed,unified+dsl"


def step_ratios(data: Path, methods: list[str], compression: float, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    """Alternating step times of each method's model (``full`` first, the baseline)."""
    import torch.distributed as dist

    from recsys.training.bench.quality import Point, Sweep, SweepSettings
    from recsys.training.bench.step_times import alternate, config_stepper
    from recsys.training.distributed import ensure_process_group

    sweep = Sweep(SweepSettings(dataset=data, methods=methods, budgets=[compression], sets=[f"training.batch_size={batch}"]))
    names = ["full", *[m for m in methods if m != "full"]]
    started = ensure_process_group()
    steppers, nbytes, prepare_ms, failed = {}, {}, {}, {}
    try:
        for name in names:
            point = Point(name, None if name == "full" else compression, 0)
            try:
                stepper = config_stepper(sweep.config(point))
                steppers[name] = (stepper.step, stepper.batches)
                nbytes[name], prepare_ms[name] = stepper.embedding_bytes, stepper.prepare_ms
            except Exception as exc:  # noqa: BLE001 - a method that cannot meet the budget is reported, not fatal
                failed[name] = f"{type(exc).__name__}: {exc}"
        timing = alternate(steppers, steps, rounds, baseline="full")
    finally:
        if started:
            dist.destroy_process_group()
    return {"compression": compression, "batch": batch, "embedding_bytes": nbytes, "loader_prepare_ms": prepare_ms, "failed": failed, **timing}


def serving(out: Path, duration: float) -> dict[str, Any]:
    """Run ``bench.serving_bench`` (no quality part) in a child process; its results."""
    from recsys import source_root

    root = source_root()
    if root is None:
        return {"error": "--serving runs bench/serving_bench.py of a source checkout (it starts Redis); none here"}
    folder = out / "serving"
    cmd = [sys.executable, "-m", "bench.serving_bench", "--out", str(folder.resolve()), "--skip-quality", "--duration", str(duration)]
    code = subprocess.call(cmd, cwd=root)
    path = folder / "results.json"
    if code or not path.exists():
        return {"error": f"bench.serving_bench exited with {code}"}
    return json.loads(path.read_text())


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# Speed report ({report['date']})",
        "",
        f"{env['cpus']} CPUs, {env['threads']} torch threads, load average before {env['load_before']}, after {env['load_after']}; "
        f"torch {env['torch']}, Python {env['python']}.",
        "",
    ]
    st = report.get("step_time")
    if st:
        lines += [
            f"## Train step time against `full` (batch {st['batch']}, methods at {st['compression']:g}×, "
            f"{st['rounds']} alternating rounds of {st['steps_per_round']} steps)",
            "",
            "The step takes batches as the training loader hands them over; the method's `prepare` (e.g. Unified "
            "Embedding's hashing) runs on the loader's thread beside the step, its cost per batch in the last column.",
            "",
            "| method | embedding bytes | median ms/step | min ms/step | ratio (median) | ratio (min) | loader prepare ms/batch |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, ms in st["step_ms_median"].items():
            lines.append(
                f"| {name} | {st['embedding_bytes'][name]:,} | {ms:.1f} | {st['step_ms_min'][name]:.1f} "
                f"| {st['ratio_median'][name]:.2f}× | {st['ratio_min'][name]:.2f}× | {st['loader_prepare_ms'][name]:.2f} |"
            )
        lines += [f"| {name} | — | — | — | failed: {msg[:200]} | | |" for name, msg in st["failed"].items()]
        lines.append("")
    ts = report.get("torchrec_vs_plain")
    if ts:
        lines += [
            f"## TorchRec DLRM-full against plain PyTorch ({ts['rows']:,} train rows, batch {ts['batch']})",
            "",
            "| trainer | samples/s |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:,.0f} |" for k, v in ts["samples_per_s"].items()]
        lines += [
            "",
            f"TorchRec / plain Adam: {ts['ratio_vs_plain_adam']:.2f}×; TorchRec / plain SparseAdam: {ts['ratio_vs_plain_sparse_adam']:.2f}×",
            "",
        ]
    cv = report.get("conversion")
    if cv:
        c = cv["conversion"]
        lines += [
            f"## Conversion and batches ({cv['input_rows']:,} rows, {cv['input_source']})",
            "",
            f"- convert: {c['convert_rows_per_s']:,} rows/s, peak RSS {c['peak_rss_gib']} GiB",
        ]
        lines += [f"- Parquet → batches ({scheme} ids, batch 2048): {b['rows_per_s']:,} rows/s" for scheme, b in cv["batches"].items()]
        lines.append("")
    sv = report.get("serving")
    if sv:
        lines += ["## Serving", ""]
        if "error" in sv:
            lines.append(f"failed: {sv['error']}")
        for r in sv.get("in_process", []):
            lines.append(
                f"- in process, {r['dtype']}, {r['ids']} ids: store {r['store_lookups_per_s']:,.0f} lookups/s, "
                f"raw fbgemm TBE {r['raw_tbe_lookups_per_s']:,.0f}"
            )
        for r in sv.get("http_vs_redis", []):
            lines.append(
                f"- {r['target']}, {r['ids']} ids, {r['concurrency']} conn.{' ' + r['mode'] if r.get('mode') else ''}: "
                f"{r['requests_per_s']:,.0f} req/s, {r['vectors_per_s']:,.0f} vectors/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
            )
        lines.append("")
    return "\n".join(lines)


QUICK = {"data": "data/bench_speed_quick", "rows": 20_000, "methods": "full,hash", "steps": 3, "rounds": 2, "plain_steps": 5, "convert_rows": 20_000}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every selected part; writes ``speed.json`` and ``speed.md`` in ``args.out``
    (``--quick``: the small sizes of ``QUICK``, figures for a smoke test only)."""
    import torch

    if args.quick:
        args = argparse.Namespace(**{**vars(args), **QUICK})

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "environment": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_before": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    if not (data / "dataset.json").exists():
        from recsys.data.synthetic import generate

        generate(data, rows=args.rows, profile="criteo", seed=0, progress=False)
    if not args.skip_steps:
        report["step_time"] = step_ratios(data, args.methods.split(","), args.compression, args.batch, args.steps, args.rounds)
    if not args.skip_plain:
        from recsys.training.bench.train_speed import measure

        report["torchrec_vs_plain"] = measure(data, args.batch, args.plain_steps)
    if not args.skip_convert:
        from recsys.training.bench.convert_bench import main as convert_bench

        report["conversion"] = convert_bench(
            ["--rows", str(args.convert_rows), "--random", "--out", str(out / "convert.json")]
        )  # random high-cardinality rows
    if args.serving:
        report["serving"] = serving(out, args.serving_duration)
    report["environment"]["load_after"] = round(os.getloadavg()[0], 2)
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "speed.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data/bench_speed", help="synthetic criteo dataset for the step timings (generated if missing)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to generate when --data is missing")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="methods timed against full (names of `recsys bench quality`)")
    parser.add_argument("--compression", type=float, default=10.0, help="budget of the compressed methods in the step timings")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="steps per method per round")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds")
    parser.add_argument("--plain-steps", type=int, default=40, help="steps of each trainer in the TorchRec vs plain PyTorch part")
    parser.add_argument("--convert-rows", type=int, default=1_000_000, help="rows of the conversion benchmark input")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-steps", action="store_true", help="leave out the method step times")
    parser.add_argument("--skip-plain", action="store_true", help="leave out TorchRec vs plain PyTorch")
    parser.add_argument("--skip-convert", action="store_true", help="leave out conversion and batch throughput")
    parser.add_argument("--serving", action="store_true", help="also run bench.serving_bench (starts servers and Redis; minutes)")
    parser.add_argument("--serving-duration", type=float, default=4.0, help="seconds per serving load-generator run")
    parser.add_argument("--out", default="bench_out/speed", help="report folder")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run in about a minute: {QUICK}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
