"""Serving benchmark: quantization quality, in-process lookups vs fbgemm's raw TBE, HTTP vs Redis, memory.

1. Quality: short DLRM runs (``full``, ``hash`` at 10x) on synthetic data, exported at
   fp32/fp16/int8/int4; test AUC of each artifact and its change against fp32.
2. In-process: ``Store.embeddings`` (raw strings -> hash -> vocabulary -> quantized EBC) and
   the method forward on pre-encoded ids, against the same fbgemm ``IntNBit`` TBE called
   directly with the same indices (lookups/s and the ratio), on a Criteo-sized ``full`` table.
3. HTTP vs Redis: ``recsys serve`` on 127.0.0.1 (1 and 2 worker processes) and a
   ``redis-server`` started here holding the same vectors (MGET), driven by ``bench.serving_load``
   in a separate process per run (pre-encoded requests on raw connections for both targets);
   requests of 1, 64 and 512 ids, JSON and binary responses, closed loop at 1 and 8 connections
   (peak throughput, latency); moderate load: an open loop at 25% and 50% of the binary
   endpoint's peak request rate for 64 ids, the same rates against Redis; and the usual Python clients (httpx,
   redis-py) for reference. The load average is recorded before and after (shared machines).
4. Memory: peak RSS of a process that loads each artifact, against the artifact's size (the
   process total, and the load alone: the peak over the RSS before it, imports warmed up).

``--quick``: only the fair pinned comparison of ``bench.serving_fair`` (server and Redis on one
core, the load generator on the other, alternating runs, ids.v1 requests on uvicorn and granian,
the in-process bulk API against redis-py); it ends with ``serving vs redis at 512 ids: X.XX×``.
Its load generator is the compiled ``bench/loadgen.c`` (built with ``cc`` into ``bench_out/``; without
a C compiler: ``apt-get install -y gcc``) or, with ``--loadgen python``, ``bench.serving_load``.

Usage: ``python -m bench.serving_bench [--quick [--rounds 3]] [--out bench_out/serving] [--duration 6] [--skip-quality] [--http-only] [--workers 1,2]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.loadgen import compiler
from bench.serving_fixture import fake_dataset, fake_run, key_pool, load_command, serve_command, wait_for_redis, wait_ready
from recsys.export import export_run, load_artifact
from recsys.serving.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def quality(out: Path) -> list[dict]:
    from recsys.config import load_config
    from recsys.data.synthetic import generate
    from recsys.metrics import auc
    from recsys.training.run import train_experiment
    from tests.serving_support import test_batches

    data = out / "quality-data"
    generate(data, rows=120_000, profile="small", seed=11, progress=False, overwrite=True)
    rows = []
    for method, extra in (("full", []), ("hash", ["embedding.compression=10"])):
        cfg = load_config(
            ROOT / "configs/quickstart.yaml",
            [
                f"data.path={data}",
                f"embedding.method={method}",
                "tracking.enabled=false",
                "training.epochs=1",
                "training.batch_size=1024",
                "training.progress=false",
                *extra,
            ],
        )
        run = out / f"quality-{method}"
        train_experiment(cfg, run)
        base = None
        for dtype in ("fp32", "fp16", "int8", "int4"):
            art = out / f"quality-{method}-{dtype}"
            export_run(run, art, dtype=dtype, overwrite=True)
            store = Store(load_artifact(art))
            batches = test_batches(data, store.manifest.method.id_scheme, 8192)
            scores = np.concatenate([store.score_batch(b.dense_features, b.sparse_features) for b in batches])
            value = auc(np.concatenate([b.labels.numpy() for b in batches]), scores)
            base = value if base is None else base
            rows.append(
                {
                    "method": method,
                    "dtype": dtype,
                    "test_auc": value,
                    "delta_auc": value - base,
                    "embedding_bytes": (art / "embedding.safetensors").stat().st_size,
                }
            )
    return rows


def _rate(fn, seconds: float = 2.0) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def in_process(stores: dict[str, Store], pool: list[tuple[str, str]]) -> list[dict]:
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QEBC

    from recsys.export.tables import quantize_tables

    rows = []
    for dtype, store in stores.items():
        ebc = store.embedding.ebc
        tbe_owner = ebc if isinstance(ebc, QEBC) else quantize_tables(store.embedding.ebc, "fp32")[0]
        (tbe,) = tbe_owner._emb_modules
        for n in (64, 512):
            pairs = pool[:n]
            kjt = store.encoder.pairs(pairs)[0]
            indices, offsets = kjt.values().int(), kjt.offsets().int()
            with torch.inference_mode():
                full = _rate(lambda: store.embeddings(pairs))
                method = _rate(lambda: store.pooled(kjt))
                raw = _rate(lambda: tbe(indices, offsets))
            rows.append(
                {
                    "dtype": dtype,
                    "ids": n,
                    "store_lookups_per_s": full * n,
                    "method_lookups_per_s": method * n,
                    "raw_tbe_lookups_per_s": raw * n,
                    "store_vs_raw": full / raw,
                    "method_vs_raw": method / raw,
                }
            )
    return rows


RSS_PROBE = """
import ctypes, gc, json, sys, torch
torch.set_num_threads(1)
from recsys.serving.store import Store

def status():
    return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}

warm = Store.open(sys.argv[1])  # a first load pulls in the lazily imported libraries
warm.embeddings([(warm.features[0], "x")])
del warm
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS: it covers the load only
base = status()["VmRSS"]
store = Store.open(sys.argv[1])
store.embeddings([(store.features[0], "x")])
after = status()
print(json.dumps({"baseline_rss": base, "peak_rss": after["VmHWM"], "rss_after_load": after["VmRSS"]}))
"""


def memory(artifacts: dict[str, Path]) -> list[dict]:
    rows = []
    for dtype, art in artifacts.items():
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(art)], cwd=ROOT, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = _size(art)
        rows.append(
            {
                "dtype": dtype,
                "artifact_bytes": size,
                **r,
                "process_peak_over_artifact": r["peak_rss"] / size,
                "load_peak_over_artifact": (r["peak_rss"] - r["baseline_rss"]) / size,
                "resident_over_artifact": (r["rss_after_load"] - r["baseline_rss"]) / size,
            }
        )
    return rows


def _start_server(art: Path, port: int, workers: int) -> subprocess.Popen:
    return subprocess.Popen(serve_command(art, port, workers), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rss(pid: int) -> dict[str, int]:
    """VmHWM/VmRSS of a process and its children (the worker processes when workers > 1)."""
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = {"VmHWM": 0, "VmRSS": 0}
    for p in pids:
        for line in open(f"/proc/{p}/status"):
            key = line.split(":")[0]
            if key in total:
                total[key] += int(line.split()[1]) * 1024
    return total


def _load(target: str, port: int, keys: Path, ids: int, concurrency: int, duration: float, *extra: str) -> dict:
    cmd = load_command(target, port, keys, ids, concurrency, duration, *extra)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def http_vs_redis(
    art: Path, store: Store, pool: list[tuple[str, str]], out: Path, duration: float, workers: list[int], sizes: list[int]
) -> tuple[list[dict], dict]:
    """Each load generator run is its own process (``bench.serving_load``); HTTP and Redis rows alternate."""
    import redis

    keys = out / "keys.json"
    keys.write_text(json.dumps(pool))
    redis_port = _port()
    rserver = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: list[dict] = []
    memory: dict = {"artifact_bytes": _size(art)}
    try:
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        wait_for_redis(client)
        vectors = store.embeddings(pool)
        for i in range(0, len(pool), 10_000):
            client.mset({f"{f}:{v}": vectors[j].tobytes() for j, (f, v) in enumerate(pool[i : i + 10_000], start=i)})
        assert client.dbsize() == len(set(map(tuple, pool))), "redis does not hold every key"
        for n_workers in workers:
            http_port = _port()
            server = _start_server(art, http_port, n_workers)
            try:
                wait_ready(f"http://127.0.0.1:{http_port}/readyz", server, "recsys serve")
                tag = {"workers": n_workers}
                for ids in sizes:
                    for concurrency in (1, 8) if n_workers == 1 else (8,):
                        for target, port, extra in (("http", http_port, []), ("http", http_port, ["--binary"]), ("redis", redis_port, [])):
                            if target == "redis" and n_workers != workers[0]:
                                continue
                            rows.append({**_load(target, port, keys, ids, concurrency, duration, *extra), **tag})
                # moderate load: open loop at a quarter and half of the binary endpoint's closed-loop peak for 64 ids, the same rate for Redis
                peak = max(
                    (r["requests_per_s"] for r in rows if r["target"] == "http-binary" and r["ids"] == 64 and r["workers"] == n_workers), default=0
                )
                for fraction in (0.25, 0.5) if peak else ():
                    rate = f"{fraction * peak:.0f}"
                    for target, port, extra in (("http", http_port, []), ("http", http_port, ["--binary"]), ("redis", redis_port, [])):
                        rows.append({**_load(target, port, keys, 64, 8, duration, "--rate", rate, *extra), **tag, "fraction_of_peak": fraction})
                if n_workers == workers[0]:  # the usual Python clients (httpx, redis-py), for reference
                    for target, port in (("http", http_port), ("redis", redis_port)):
                        rows.append({**_load(target, port, keys, 64, 1, duration, "--client", "lib"), **tag})
                rss = _rss(server.pid)
                memory[f"server_workers_{n_workers}"] = {"peak_rss": rss["VmHWM"], "rss": rss["VmRSS"]}
            finally:
                server.terminate()
                server.wait(30)
        return rows, memory
    finally:
        rserver.terminate()
        rserver.wait(30)


def http_markdown(rows: list[dict], load_before: str, load_after: str) -> str:
    """The HTTP vs Redis rows as a Markdown table."""
    lines = [
        f"Load average (1/5/15 min) before / after: {load_before} / {load_after}",
        "",
        "| workers | target | ids | load | conns | vectors/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['target']} | {r['ids']} | {r['load']} | {r['concurrency']} | {r['vectors_per_s']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def _uptime() -> str:
    return open("/proc/loadavg").read().strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_out/serving")
    p.add_argument("--duration", type=float, default=None, help="seconds per load-generator run (default 6; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="only the fair pinned comparison (bench.serving_fair)")
    p.add_argument("--rounds", type=int, default=3, help="--quick: alternating rounds per target (medians)")
    p.add_argument("--scale", type=float, default=0.5, help="Criteo cardinalities >= 100k are multiplied by this")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--http-only", action="store_true", help="only the HTTP vs Redis part (artifacts from an earlier run are reused)")
    p.add_argument("--workers", default="1,2", help="server process counts to measure, comma-separated")
    p.add_argument("--sizes", default="1,64,512", help="ids per request, comma-separated")
    p.add_argument(
        "--fronts", default="uvicorn,uvicorn-lean,granian,granian-rsgi", help="--quick: the HTTP fronts measured against Redis, comma-separated"
    )
    p.add_argument(
        "--loadgen",
        choices=["c", "python"],
        default="c" if compiler() else "python",
        help="--quick: the load generator, bench/loadgen.c (default when cc is found) or bench.serving_load",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if not (args.skip_quality or args.quick):  # --quick: the fair comparison alone
        results["quality"] = quality(out)
        print(json.dumps(results["quality"], indent=1), flush=True)
    spec = fake_dataset(out / "criteo-data", args.scale)
    artifacts = {d: out / f"criteo-full-{d}" for d in ("fp32", "int8")}
    if args.quick:
        _quick(out, spec, artifacts["int8"], args)
        return
    args.duration = args.duration or 6.0
    if not (args.http_only and all((a / "manifest.json").exists() for a in artifacts.values())):
        run = fake_run(out / "criteo-data", out / "criteo-run")
        for dtype, art in artifacts.items():
            export_run(run, art, dtype=dtype, overwrite=True)
    stores = {d: Store.open(a) for d, a in artifacts.items()}
    pool = key_pool(spec, 50_000)
    if not args.http_only:
        results["in_process"] = in_process(stores, pool)
        print(json.dumps(results["in_process"], indent=1), flush=True)
        results["memory"] = memory(artifacts)
        print(json.dumps(results["memory"], indent=1), flush=True)
    results["load_before"] = _uptime()
    results["http_vs_redis"], results["server_memory"] = http_vs_redis(
        artifacts["int8"],
        stores["int8"],
        pool,
        out,
        args.duration,
        [int(w) for w in args.workers.split(",")],
        [int(n) for n in args.sizes.split(",")],
    )
    results["load_after"] = _uptime()
    print("load average before/after the HTTP runs:", results["load_before"], "/", results["load_after"])
    (out / "http.md").write_text(http_markdown(results["http_vs_redis"], results["load_before"], results["load_after"]))
    path = out / ("results_http.json" if args.http_only else "results.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def _quick(out: Path, spec, art: Path, args: argparse.Namespace) -> None:
    from bench.serving_fair import fair, markdown

    if not (art / "manifest.json").exists():
        export_run(fake_run(out / "criteo-data", out / "criteo-run"), art, dtype="int8", overwrite=True)
    store = Store.open(art)
    result = fair(
        art,
        store,
        key_pool(spec, 50_000),
        out,
        args.duration or 3.0,
        args.rounds,
        [int(n) for n in args.sizes.split(",")],
        _port,
        tuple(args.fronts.split(",")),
        args.loadgen,
    )
    (out / "fair.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "fair.md").write_text(text)
    print(text, end="", flush=True)


if __name__ == "__main__":
    main()
