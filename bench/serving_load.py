"""Async load generator, run as its own process by ``bench.serving_bench`` (like wrk, in Python).

``--target http``: ``POST /v1/embeddings`` with ``--ids`` (feature, value) pairs, JSON back or,
with ``--binary``, float32 rows; with ``--ids-format`` the request is an ids.v1 body (the pairs'
raw ids grouped by feature) and the answer float32 rows; ``--target redis``: ``MGET`` of as many keys ``<feature>:<value>``.

Two clients (``--client``):

* ``raw`` (default): requests are pre-encoded (HTTP/1.1 keep-alive bytes, RESP arrays) for
  256 random batches per connection, sent on plain asyncio streams; a reply is read by its
  framing (``Content-Length``; the fixed RESP layout of present values) and checked: status 200
  and the right size (binary, RESP), a JSON body that ends the object. The client costs a few
  tens of µs a request, the same for both targets, so the servers are what is measured.
* ``lib``: the usual Python clients, ``httpx.AsyncClient`` and ``redis.asyncio`` (bodies built
  and replies decoded per request): what a Python caller pays end to end.

Load: ``--concurrency C`` connections each send one request at a time (closed loop, the peak);
with ``--rate R`` requests are instead sent at Poisson arrivals of ``R`` per second over up to
``C`` connections (open loop, "moderate load"), and a request's latency counts from its
scheduled time, so a server that falls behind shows queueing rather than a slower send rate.

Prints one JSON line: requests/s, vectors/s, p50/p99/max latency (ms), errors.

Usage: ``python -m bench.serving_load --target http --port 8000 --keys keys.json --ids 64 --concurrency 8``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Awaitable, Callable

import numpy as np

Call = Callable[[int], Awaitable[bool]]  # request number -> ok
BATCHES = 256


def batches(pool: list[list[str]], n: int, seed: int) -> list[list[list[str]]]:
    """``BATCHES`` random batches of ``n`` pool entries (the load generators' request batches)."""
    rng = random.Random(seed)
    return [[pool[rng.randrange(len(pool))] for _ in range(n)] for _ in range(BATCHES)]


def ids_body(batch: list[list]) -> bytes:
    """The ids.v1 body of a batch of ``[feature, value, raw id]``: the raw ids grouped by feature
    (the answer keeps that order)."""
    from recsys.serving.idsv1 import encode

    by: dict[str, list[int]] = {}
    for f, _, raw in batch:
        by.setdefault(f, []).append(raw)
    return encode({f: np.array(ids, np.int64) for f, ids in by.items()})


def http_request(batch: list[list], ids: bool = True, binary: bool = True) -> bytes:
    """The complete keep-alive ``POST /v1/embeddings`` of a batch: an ids.v1 body (``ids``) or JSON items."""
    binary = binary or ids
    accept = b"application/octet-stream" if binary else b"application/json"
    ctype = b"application/vnd.recsys.ids.v1" if ids else b"application/json"
    body = ids_body(batch) if ids else json.dumps({"items": [{"feature": f, "value": v} for f, v, *_ in batch]}, separators=(",", ":")).encode()
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nAccept: %s\r\nContent-Length: %d\r\n\r\n"
    return head % (ctype, accept, len(body)) + body


def redis_command(batch: list[list]) -> bytes:
    """The RESP ``MGET`` of a batch's keys ``<feature>:<value>``."""
    keys = [f"{f}:{v}".encode() for f, v, *_ in batch]
    return b"".join([b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)] + [b"$%d\r\n%s\r\n" % (len(k), k) for k in keys])


class RawHttp:
    """One keep-alive HTTP/1.1 connection with pre-encoded requests (JSON items, or ids.v1 with ``ids``)."""

    def __init__(self, port: int, batches: list[list[list[str]]], binary: bool, dim: int, ids: bool = False) -> None:
        self.port, self.binary, self.dim, self.n = port, binary or ids, dim, len(batches[0])
        self.requests = [http_request(batch, ids, binary) for batch in batches]

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def __call__(self, i: int) -> bool:
        self.writer.write(self.requests[i % len(self.requests)])
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            return False
        return len(body) == 4 * self.n * self.dim if self.binary else body.endswith(b"]]}")

    async def close(self) -> None:
        self.writer.close()


class RawRedis:
    """One Redis connection with pre-encoded ``MGET`` commands; replies read by their fixed size."""

    def __init__(self, port: int, batches: list[list[list[str]]], dim: int) -> None:
        self.port, self.n = port, len(batches[0])
        self.commands = [redis_command(batch) for batch in batches]
        self.head = b"*%d\r\n" % self.n
        self.item = b"$%d\r\n" % (4 * dim)
        self.size = len(self.head) + self.n * (len(self.item) + 4 * dim + 2)

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def __call__(self, i: int) -> bool:
        self.writer.write(self.commands[i % len(self.commands)])
        reply = await self.reader.readexactly(self.size)  # a missing key would shorten it: the request then times out
        return reply.startswith(self.head + self.item)

    async def close(self) -> None:
        self.writer.close()


class LibHttp:
    def __init__(self, port: int, batches: list[list[list[str]]], binary: bool, dim: int) -> None:
        import httpx

        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.batches, self.binary = batches, binary
        self.headers = {"accept": "application/octet-stream"} if binary else {}

    async def open(self) -> None:
        pass

    async def __call__(self, i: int) -> bool:
        batch = self.batches[i % len(self.batches)]
        r = await self.client.post("/v1/embeddings", json={"items": [{"feature": f, "value": v} for f, v, *_ in batch]}, headers=self.headers)
        if r.status_code != 200:
            return False
        if self.binary:
            return np.frombuffer(r.content, "<f4").size == len(batch) * int(r.headers["x-embedding-dim"])
        return np.asarray(r.json()["vectors"], np.float32).shape[0] == len(batch)

    async def close(self) -> None:
        await self.client.aclose()


class LibRedis:
    def __init__(self, port: int, batches: list[list[list[str]]], dim: int) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
        self.batches, self.dim = batches, dim

    async def open(self) -> None:
        pass

    async def __call__(self, i: int) -> bool:
        values = await self.client.mget([f"{f}:{v}" for f, v, *_ in self.batches[i % len(self.batches)]])
        return all(x is not None for x in values) and np.frombuffer(b"".join(values), "<f4").size == len(values) * self.dim

    async def close(self) -> None:
        await self.client.aclose()


def _connection(args: argparse.Namespace, batches: list[list[list[str]]]):
    if args.target == "http":
        if args.client == "raw":
            return RawHttp(args.port, batches, args.binary, args.dim, args.ids_format)
        return LibHttp(args.port, batches, args.binary, args.dim)
    return (RawRedis if args.client == "raw" else LibRedis)(args.port, batches, args.dim)


async def _timed(call: Call, i: int, scheduled: float, lat: list[float], errors: list[int], timeout: float) -> None:
    try:
        ok = await asyncio.wait_for(call(i), timeout)
    except Exception:
        ok = False
    lat.append(time.perf_counter() - scheduled)
    if not ok:
        errors.append(1)


async def _closed(conns: list, until: float, lat: list[float], errors: list[int], timeout: float) -> None:
    async def loop(conn) -> None:
        i = 0
        while time.perf_counter() < until:
            await _timed(conn, i, time.perf_counter(), lat, errors, timeout)
            i += 1

    await asyncio.gather(*[loop(c) for c in conns])


async def _open(conns: list, rate: float, until: float, lat: list[float], errors: list[int], timeout: float, seed: int) -> None:
    free: asyncio.Queue = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    rng = random.Random(seed)
    tasks = []

    async def one(i: int, scheduled: float) -> None:
        conn = await free.get()
        try:
            await _timed(conn, i, scheduled, lat, errors, timeout)
        finally:
            free.put_nowait(conn)

    t, i = time.perf_counter(), 0
    while t < until:
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, t)))
        i += 1
        t += rng.expovariate(rate)
    await asyncio.gather(*tasks)


async def _run(args: argparse.Namespace) -> dict:
    pool = json.loads(open(args.keys).read())
    conns = [_connection(args, batches(pool, args.ids, 1000 * k + args.ids)) for k in range(args.concurrency)]
    for c in conns:
        await c.open()
    lat: list[float] = []
    errors: list[int] = []
    warm: list[float] = []
    await _closed(conns, time.perf_counter() + args.warmup, warm, [], args.timeout)  # warm up (connections, caches)
    start = time.perf_counter()
    if args.rate:
        await _open(conns, args.rate, start + args.duration, lat, errors, args.timeout, args.ids)
    else:
        await _closed(conns, start + args.duration, lat, errors, args.timeout)
    elapsed = time.perf_counter() - start
    for c in conns:
        await c.close()
    ms = np.array(lat) * 1e3
    return {
        "target": args.target + ("-ids" if args.ids_format else "-binary" if args.binary else "") + ("" if args.client == "raw" else "-lib"),
        "ids": args.ids,
        "load": f"open {args.rate:g}/s" if args.rate else "closed",
        "concurrency": args.concurrency,
        "requests": len(lat),
        "warmup_requests": len(warm),
        "errors": len(errors),
        "requests_per_s": len(lat) / elapsed,
        "vectors_per_s": (len(lat) - len(errors)) * args.ids / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", choices=["http", "redis"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--keys", required=True, help="JSON list of [feature, value] pairs ([feature, value, raw id] for --ids-format)")
    p.add_argument("--ids", type=int, default=64)
    p.add_argument("--dim", type=int, default=16, help="vector width (checks reply sizes)")
    p.add_argument("--concurrency", type=int, default=8, help="connections")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: requests per second (Poisson); 0 = closed loop")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as an error")
    p.add_argument("--client", choices=["raw", "lib"], default="raw")
    p.add_argument("--binary", action="store_true", help="float32 rows back (JSON request)")
    p.add_argument("--ids-format", dest="ids_format", action="store_true", help="ids.v1 requests (raw ids by feature), float32 rows back")
    print(json.dumps(asyncio.run(_run(p.parse_args()))))


if __name__ == "__main__":
    main()
