"""The fair serving benchmark (``python -m bench.serving_bench --quick``): our service against Redis
MGET of the same vectors, each server alone on one core.

The server under test (``recsys serve`` with one worker process, on uvicorn, uvicorn-lean, granian and granian-rsgi, or
``redis-server``) runs pinned to core ``SERVER_CORE`` and the load generator to core ``CLIENT_CORE``
with ``taskset``, so vectors/s is per server core. The load generator is the compiled one
(``bench/loadgen.c`` via ``bench.loadgen``: epoll, pre-built requests, a few µs a request, so the
server rather than the client sets the pace) or, with ``generator="python"``, ``bench.serving_load``
(asyncio; on 2 cores it could not keep either server's core busy). Each peak row also gives the
server's CPU use of its core during the run. Our requests are ids.v1 bodies
(the pairs' raw ids grouped by feature, float32 rows back); Redis gets ``MGET`` of the same keys
``<feature>:<value>`` holding the same float32 bytes. Runs alternate target by target (ours, Redis,
ours, ...) for ``rounds`` rounds and the medians are reported, so a neighbour's load on a shared
box hits every target alike. Then an open loop at a quarter of each target's peak for 64 ids
(moderate load: p50/p99), the same at one rate for all (a quarter of the slowest target's peak), and the in-process bulk API ``Store.lookup_blocks`` against redis-py's
``mget`` of the same keys from Python (one process on the client core).

The last line printed is ``serving vs redis at 512 ids: X.XX×``: our best front's vectors/s per
server core over Redis's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from bench import loadgen
from bench.serving_fixture import load_command, serve_command, wait_for_redis, wait_ready
from recsys.hashing import hash64_strings
from recsys.serving.store import Store

ROOT = Path(__file__).resolve().parents[1]
CLIENT_CORE, SERVER_CORE = 0, 1
FRONTS = ("uvicorn", "uvicorn-lean", "granian", "granian-rsgi")


def pinned(core: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if shutil.which("taskset") else cmd


class Generator:
    """One load generator for every target, on the client core: ``c`` (``bench/loadgen.c``) or ``python``
    (``bench.serving_load``); ``pool`` holds ``[feature, value, raw id]`` entries, ``dim`` the vector width."""

    def __init__(self, kind: str, out: Path, pool: list[list], dim: int) -> None:
        if kind not in ("c", "python"):
            raise ValueError(f"loadgen must be 'c' or 'python', got {kind!r}")
        self.kind, self.out, self.pool, self.dim = kind, out, pool, dim
        self.keys = out / "keys_ids.json"
        self.keys.write_text(json.dumps(pool))
        self.exe = loadgen.binary() if kind == "c" else None
        self.files: dict[tuple[str, int, int], Path] = {}

    def __call__(self, target: str, port: int, ids: int, concurrency: int, duration: float, rate: float = 0.0, warmup: float = 0.5) -> dict:
        if self.exe is None:
            extra = ["--warmup", f"{warmup:g}", *(["--rate", f"{rate:.0f}"] if rate else []), *(["--ids-format"] if target == "http" else [])]
            cmd = pinned(CLIENT_CORE, load_command(target, port, self.keys, ids, concurrency, duration, *extra))
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            return {**json.loads(res.stdout.strip().splitlines()[-1]), "generator": "python"}
        key = (target, ids, concurrency)
        if key not in self.files:
            self.files[key] = loadgen.write_requests(self.out / f"requests-{target}-{ids}-{concurrency}.bin", target, self.pool, ids, concurrency)
        cmd = loadgen.command(self.exe, target, port, self.files[key], ids, concurrency, duration, warmup, rate, self.dim)
        return loadgen.run(pinned(CLIENT_CORE, cmd), target, ids, concurrency, rate)


def _start_front(art: Path, port: int, front: str) -> subprocess.Popen:
    cmd = serve_command(art, port, front=front)
    return subprocess.Popen(pinned(SERVER_CORE, cmd), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _redis(port: int) -> subprocess.Popen:
    cmd = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen(pinned(SERVER_CORE, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _fill_redis(client, store: Store, pool: list[tuple[str, str]]) -> None:
    vectors = store.embeddings(pool)
    for i in range(0, len(pool), 10_000):
        client.mset({f"{f}:{v}": vectors[j].tobytes() for j, (f, v) in enumerate(pool[i : i + 10_000], start=i)})
    assert client.dbsize() == len(set(map(tuple, pool))), "redis does not hold every key"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (granian's worker included)."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measured(pid: int, generator: Generator, target: str, port: int, ids: int, concurrency: int, duration: float, warmup: float = 0.5) -> dict:
    """A closed-loop run, the server's CPU time per request during it (robust to a busy box: CPU, not wall)
    and its use of its core (CPU seconds over the run's warm-up + measured seconds)."""
    before = _cpu_seconds(pid)
    row = generator(target, port, ids, concurrency, duration, warmup=warmup)
    spent = _cpu_seconds(pid) - before  # warm-up included, so per request of warm-up and run together
    return {
        **row,
        "server_cpu_us_per_request": 1e6 * spent / max(row["requests"] + row["warmup_requests"], 1),
        "server_core_use": spent / (duration + warmup),
    }


def _median_rows(runs: list[dict]) -> dict:
    keys = ("vectors_per_s", "requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "server_core_use")
    row = {k: statistics.median(r[k] for r in runs) for k in keys}
    if all("client_core_use" in r for r in runs):  # the compiled generator's own CPU use of its core
        row["client_core_use"] = statistics.median(r["client_core_use"] for r in runs)
    return {**row, "runs": len(runs), "errors": sum(r["errors"] for r in runs), "vectors_per_s_all": [r["vectors_per_s"] for r in runs]}


def bulk_in_process(store: Store, pool: list[tuple[str, str]], redis_port: int, n: int = 512, seconds: float = 2.0) -> dict:
    """``Store.lookup_blocks`` of ``n`` pairs (raw ids by feature) against redis-py ``mget`` of their keys
    (values joined and read as float32), vectors/s of each in this process."""
    import redis

    rng = np.random.default_rng(7)
    batch = [pool[i] for i in rng.integers(0, len(pool), n)]
    by: dict[str, list[str]] = {}
    for f, v in batch:
        by.setdefault(f, []).append(v)
    blocks = [(f, hash64_strings(v)) for f, v in by.items()]
    keys = [f"{f}:{v}" for f, values in by.items() for v in values]
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    expected = store.lookup_blocks(blocks)
    got = np.frombuffer(b"".join(client.mget(keys)), "<f4").reshape(expected.shape)
    assert np.array_equal(got, expected), "redis holds other vectors"

    def rate(fn) -> float:
        fn()
        k, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            k += 1
        return k * n / (time.perf_counter() - start)

    ours = rate(lambda: store.lookup_blocks(blocks))
    theirs = rate(lambda: np.frombuffer(b"".join(client.mget(keys)), "<f4"))
    return {"ids": n, "bulk_api_vectors_per_s": ours, "redis_py_mget_vectors_per_s": theirs, "ratio": ours / theirs}


def fair(
    art: Path,
    store: Store,
    pool: list[tuple[str, str]],
    out: Path,
    duration: float,
    rounds: int,
    sizes: list[int],
    port_of,
    fronts: tuple[str, ...] = FRONTS,
    generator: str = "c",
) -> dict:
    """The pinned, alternating HTTP/Redis comparison of ``fronts`` driven by the ``generator`` load
    generator (``c`` or ``python``); ``port_of()`` gives a free port."""
    import redis

    raw = hash64_strings([v for _, v in pool]).tolist()
    load = Generator(generator, out, [[f, v, r] for (f, v), r in zip(pool, raw)], int(store.embeddings(pool[:1]).shape[1]))
    redis_port = port_of()
    procs = {"redis": (_redis(redis_port), redis_port)}
    try:
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        wait_for_redis(client)
        _fill_redis(client, store, pool)
        for front in fronts:
            port = port_of()
            procs[front] = (_start_front(art, port, front), port)
        for front in fronts:
            wait_ready(f"http://127.0.0.1:{procs[front][1]}/readyz", procs[front][0], f"recsys serve --server {front}")
        targets = [(front, "http", procs[front][1]) for front in fronts] + [("redis", "redis", redis_port)]
        runs: dict[tuple[str, int], list[dict]] = {}
        load_before = open("/proc/loadavg").read().strip()
        for r in range(rounds):
            for ids in sizes:
                order = targets[r % len(targets) :] + targets[: r % len(targets)]  # rotate who goes first
                for name, target, port in order:
                    row = measured(procs[name][0].pid, load, target, port, ids, 8, duration)
                    runs.setdefault((name, ids), []).append(row)
                    print(json.dumps({"round": r, "name": name, **row}), flush=True)
        peak = {name: [_median_rows(runs[(name, ids)]) | {"name": name, "ids": ids} for ids in sizes] for name, *_ in targets}
        moderate: list[dict] = []
        same_rate: list[dict] = []
        if 64 in sizes:
            for name, target, port in targets:
                rate = 0.25 * next(p["requests_per_s"] for p in peak[name] if p["ids"] == 64)
                row = load(target, port, 64, 8, duration, rate=rate, warmup=1.0)
                moderate.append({"name": name, "rate": rate, **row})
                print(json.dumps({"moderate": name, **row}), flush=True)
            common = min(m["rate"] for m in moderate)  # the same offered load for all: a quarter of the slowest's peak
            for name, target, port in targets:
                row = load(target, port, 64, 8, duration, rate=common, warmup=1.0)
                same_rate.append({"name": name, "rate": common, **row})
                print(json.dumps({"same_rate": name, **row}), flush=True)
        bulk = _pinned_bulk(store, pool, redis_port)
        load_after = open("/proc/loadavg").read().strip()
        return {
            "peak": [p for rows in peak.values() for p in rows],
            "moderate": moderate,
            "same_rate": same_rate,
            "bulk": bulk,
            "fronts": list(fronts),
            "generator": generator,
            "load_before": load_before,
            "load_after": load_after,
            "rounds": rounds,
            "duration_s": duration,
        }
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(30)


def _pinned_bulk(store: Store, pool: list[tuple[str, str]], redis_port: int) -> dict:
    """``bulk_in_process`` with this process on the client core for the measurement."""
    import os

    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {CLIENT_CORE})
        return bulk_in_process(store, pool, redis_port)
    finally:
        os.sched_setaffinity(0, before)


def markdown(result: dict) -> str:
    """Tables of ``fair``'s result, and the closing ratio line."""
    lines = [
        f"Load average before / after: {result['load_before']} / {result['load_after']}; medians of {result['rounds']} "
        f"alternating runs of {result['duration_s']:g} s, 8 connections, server on core {SERVER_CORE}, "
        f"load generator ({result.get('generator', 'python')}) on core {CLIENT_CORE}",
        "",
        "| target | ids | vectors/s per server core | requests/s | server core use | client core use | p50 ms | p99 ms "
        "| server CPU µs/request | vectors per server CPU-second | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["peak"]:
        cpu = p["server_cpu_us_per_request"]
        lines.append(
            f"| {p['name']} | {p['ids']} | {p['vectors_per_s']:,.0f} | {p['requests_per_s']:,.0f} | {p.get('server_core_use', float('nan')):.0%} | "
            f"{p.get('client_core_use', float('nan')):.0%} | "
            f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {cpu:,.0f} | {p['ids'] * 1e6 / cpu:,.0f} | {p['errors']} |"
        )
    if result["moderate"]:
        lines += [
            "",
            "Moderate load (open loop, Poisson, a quarter of each target's peak), 64 ids:",
            "",
            "| target | requests/s | p50 ms | p99 ms | max ms | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['name']} | {m['rate']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['max_ms']:.2f} | {m['errors']} |"
            for m in result["moderate"]
        ]
    if result.get("same_rate"):
        lines += [
            "",
            f"The same offered load for every target (a quarter of the slowest one's peak: {result['same_rate'][0]['rate']:,.0f} requests/s), 64 ids:",
            "",
            "| target | requests/s | p50 ms | p99 ms | max ms | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['name']} | {m['requests_per_s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['max_ms']:.2f} | {m['errors']} |"
            for m in result["same_rate"]
        ]
    b = result["bulk"]
    lines += [
        "",
        f"In-process bulk API (`Store.lookup_blocks`, {b['ids']} ids): {b['bulk_api_vectors_per_s']:,.0f} vectors/s; "
        f"redis-py `mget` of the same keys: {b['redis_py_mget_vectors_per_s']:,.0f} vectors/s ({b['ratio']:.1f}×)",
        "",
    ]
    cpu = {(p["name"], p["ids"]): p["server_cpu_us_per_request"] for p in result["peak"]}
    if ("redis", 512) in cpu:
        best = min(cpu.get((f, 512), float("inf")) for f in result.get("fronts", FRONTS))
        lines.append(f"per server CPU-second (CPU time, not wall): serving vs redis at 512 ids: {cpu[('redis', 512)] / best:.2f}×")
    lines.append(ratio_line(result))
    return "\n".join(lines) + "\n"


def ratio_line(result: dict) -> str:
    at = {(p["name"], p["ids"]): p["vectors_per_s"] for p in result["peak"]}
    ours = max(at.get((f, 512), 0.0) for f in result.get("fronts", FRONTS))
    redis = at.get(("redis", 512), float("nan"))
    return f"serving vs redis at 512 ids: {ours / redis:.2f}×"
