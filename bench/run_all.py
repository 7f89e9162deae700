"""Every speed/memory benchmark script, one after another, each in its own process.

Each script prints its report and writes JSON under ``bench_out/``. ``make bench`` runs
``recsys bench speed`` instead (``recsys.training.bench.speed_report``: one report from these scripts'
functions). Quality at equal bytes: ``recsys bench quality``; the per-method studies
``python -m bench.unified_quality``, ``bench.optembed_quality``, ``bench.dsl_quality``.

Usage: ``python -m bench.run_all [--only convert_bench,train_speed]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = {  # name -> module
    "convert_bench": "recsys.training.bench.convert_bench",
    "train_speed": "recsys.training.bench.train_speed",
    "unified_speed": "bench.unified_speed",
    "serving_bench": "bench.serving_bench",
    "ray_bench": "bench.ray_bench",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}")
    failed = []
    for name in chosen:
        module = BENCHMARKS[name]
        print(f"\n=== {module} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", module])
        print(f"=== {module}: exit {code} in {time.perf_counter() - start:.0f}s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
