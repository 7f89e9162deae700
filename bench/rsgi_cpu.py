"""CPU time of the RSGI ids.v1 handler in process: ``LeanFront`` called with a fake scope and protocol
(no sockets, no granian), the compiled kernel against the numpy path, alternated round by round.

The artifact is ``bench.serving_bench --quick``'s (Criteo-sized int8 ``full``, built when missing);
requests are 64 different ids.v1 bodies per size (``bench.serving_load.ids_body`` of the same key
pool), answered in turn. Reported: process CPU µs per request (``time.process_time``: user + sys),
medians over rounds, with the load average.

Usage: ``OMP_NUM_THREADS=1 python -m bench.rsgi_cpu [--out bench_out/serving] [--rounds 5] [--requests 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from pathlib import Path

from bench.serving_fixture import fake_dataset, fake_run, key_pool
from bench.serving_load import ids_body
from recsys.export import export_run
from recsys.hashing import hash64_strings
from recsys.serving.app import create_service
from recsys.serving.idsv1 import CONTENT_TYPE
from recsys.serving.rsgi import LeanFront
from recsys.serving.settings import ServeSettings


class Scope:
    proto, method, path = "http", "POST", "/v1/embeddings"

    def __init__(self, length: int) -> None:
        self.headers = {"content-type": CONTENT_TYPE, "content-length": str(length), "accept": "application/octet-stream"}


class Proto:
    """What granian's RSGI protocol object offers the handler: the body in one call, the answer in one."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list, body: bytes) -> None:
        self.status = status


def _bodies(spec, n: int) -> list[bytes]:
    pool = key_pool(spec, 50_000)
    raw = hash64_strings([v for _, v in pool]).tolist()
    batches = [[[*pool[(k * n + i) % len(pool)], raw[(k * n + i) % len(pool)]] for i in range(n)] for k in range(64)]
    return [ids_body(b) for b in batches]


async def _cpu_per_request(front: LeanFront, bodies: list[bytes], requests: int) -> float:
    calls = [(Scope(len(b)), Proto(b)) for b in bodies]
    for scope, proto in calls:  # warm up
        await front.__rsgi__(scope, proto)
        assert proto.status == 200, proto.status
    start = time.process_time()
    for i in range(requests):
        scope, proto = calls[i % len(calls)]
        await front.__rsgi__(scope, proto)
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_out/serving")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--sizes", default="1,64,512")
    args = p.parse_args()
    out = Path(args.out)
    spec = fake_dataset(out / "criteo-data", 0.5)
    art = out / "criteo-full-int8"
    if not (art / "manifest.json").exists():
        export_run(fake_run(out / "criteo-data", out / "criteo-run"), art, dtype="int8", overwrite=True)
    service = create_service(ServeSettings(model=str(art), poll_interval_s=0, max_items=4096))
    front = LeanFront(service)
    store = service.holder.store
    kernel = getattr(store, "kernel", None)  # None: a checkout before the kernel (a baseline run)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}; kernel built: {kernel is not None}")
    results: dict[tuple[int, str], list[float]] = {}
    sizes = [int(s) for s in args.sizes.split(",")]
    bodies = {n: _bodies(spec, n) for n in sizes}
    for _ in range(args.rounds):
        for n in sizes:
            for mode in ("numpy", "kernel") if kernel is not None else ("numpy",):
                if kernel is not None:
                    store.kernel = kernel if mode == "kernel" else None
                results.setdefault((n, mode), []).append(asyncio.run(_cpu_per_request(front, bodies[n], args.requests)))
    if kernel is not None:
        store.kernel = kernel
    print("| ids | numpy path CPU µs/request | kernel CPU µs/request | ratio |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        a, b = statistics.median(results[(n, "numpy")]), statistics.median(results.get((n, "kernel")) or [math.nan])
        print(f"| {n} | {a:.1f} | {b:.1f} | {a / b:.2f}× |")
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
