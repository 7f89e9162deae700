"""Open-loop latency of one HTTP front at fixed rates (the tail check of docs/results/serving_http.md).

Run ``python -m bench.serving_bench --quick`` once first: it writes the artifact and the request files
this replays (``bench_out/serving``). Then, e.g.::

    OMP_NUM_THREADS=1 python -m bench.serving_tail --front uvicorn-lean --rates 2000,2000 --ids 64

The server runs pinned to core 1, the compiled load generator to core 0 (Poisson arrivals at each
rate, latency from each request's scheduled time); one line per rate: requests/s, p50, p99, max.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench import loadgen
from bench.serving_fair import CLIENT_CORE, SERVER_CORE, pinned
from bench.serving_fixture import serve_command, wait_ready

OUT = Path(__file__).resolve().parents[1] / "bench_out" / "serving"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--front", default="uvicorn-lean")
    p.add_argument("--rates", default="2000,2000", help="requests/s, comma-separated, one 3 s run each")
    p.add_argument("--ids", type=int, default=64, choices=[1, 64, 512])
    p.add_argument("--port", type=int, default=18991)
    args = p.parse_args(argv)
    art, requests = OUT / "criteo-full-int8", OUT / f"requests-http-{args.ids}-8.bin"
    if not art.exists() or not requests.exists():
        sys.exit(f"{art} or {requests} is missing: run `python -m bench.serving_bench --quick` first")
    server = subprocess.Popen(
        pinned(SERVER_CORE, serve_command(art, args.port, front=args.front)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{args.port}/readyz", server, f"recsys serve --server {args.front}")
        exe = loadgen.binary()
        for rate in (float(r) for r in args.rates.split(",")):
            cmd = loadgen.command(exe, "http", args.port, requests, args.ids, 8, 3.0, 0.5, rate, 16)
            r = loadgen.run(pinned(CLIENT_CORE, cmd), "http", args.ids, 8, rate)
            print(f"{args.front} {args.ids} ids at {rate:.0f}/s: {r['requests_per_s']:.0f}/s, p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms, errors {r['errors']}", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
