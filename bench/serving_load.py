"""Closed-loop async load generator, run as its own process by ``bench.serving_bench``.

``--target http``: ``POST /v1/embeddings`` with ``--ids`` pairs (JSON or, with ``--binary``,
float32 rows back); ``--target redis``: ``MGET`` of as many keys ``<feature>:<value>``.
``--concurrency`` workers each send one request at a time for ``--duration`` seconds; prints
one JSON line: requests/s, vectors/s, p50/p99 latency (ms), errors.

Usage: ``python -m bench.serving_load --target http --port 8000 --keys keys.json --ids 64 --concurrency 8``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import numpy as np


async def _worker(call, pool: list[list[str]], n: int, seed: int, until: float, lat: list[float], errors: list[int]) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < until:
        batch = [pool[rng.randrange(len(pool))] for _ in range(n)]
        start = time.perf_counter()
        try:
            ok = await call(batch)
        except Exception:
            ok = False
        lat.append(time.perf_counter() - start)
        if not ok:
            errors.append(1)


async def _run(args: argparse.Namespace) -> dict:
    pool = json.loads(open(args.keys).read())
    lat: list[float] = []
    errors: list[int] = []
    if args.target == "http":
        import httpx

        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", limits=limits, timeout=30)
        headers = {"accept": "application/octet-stream"} if args.binary else {}

        async def call(batch: list[list[str]]) -> bool:
            r = await client.post("/v1/embeddings", json={"items": [{"feature": f, "value": v} for f, v in batch]}, headers=headers)
            if r.status_code != 200:
                return False
            return len(r.content) == 4 * len(batch) * int(r.headers["x-embedding-dim"]) if args.binary else len(r.json()["vectors"]) == len(batch)

        close = client.aclose
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis(host="127.0.0.1", port=args.port, max_connections=args.concurrency)

        async def call(batch: list[list[str]]) -> bool:
            values = await client.mget([f"{f}:{v}" for f, v in batch])
            return all(x is not None for x in values)

        close = client.aclose
    await asyncio.gather(*[_worker(call, pool, args.ids, i, time.perf_counter() + 1.0, [], []) for i in range(args.concurrency)])
    start = time.perf_counter()
    until = start + args.duration
    await asyncio.gather(*[_worker(call, pool, args.ids, 100 + i, until, lat, errors) for i in range(args.concurrency)])
    elapsed = time.perf_counter() - start
    await close()
    ms = np.array(lat) * 1e3
    return {
        "target": args.target + ("-binary" if args.binary else ""), "ids": args.ids, "concurrency": args.concurrency,
        "requests": len(lat), "errors": len(errors), "requests_per_s": len(lat) / elapsed,
        "vectors_per_s": len(lat) * args.ids / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", choices=["http", "redis"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--keys", required=True, help="JSON list of [feature, value] pairs")
    p.add_argument("--ids", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--binary", action="store_true")
    print(json.dumps(asyncio.run(_run(p.parse_args()))))


if __name__ == "__main__":
    main()
