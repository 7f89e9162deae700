"""Feast benchmark: ``get_online_features`` from our online store against Feast's sqlite and Redis
stores holding the same vectors (filled by ``recsys feast materialize``).

On a Criteo-profile artifact (``bench.serving_fixture``: random weights, 26 sparse fields, the
large cardinalities scaled by ``--scale``; method ``--method`` at ``--compression``, exported at
``--dtype``): three repos written by ``recsys feast init`` (recsys, sqlite, a ``redis-server``
started here on 127.0.0.1), the sqlite and Redis ones materialized with up to ``--per-field``
values of every field (vectors/s recorded). Then, per store, requests of 1, 64 and 512 entities
of field ``--field`` (random materialized values): p50/p99 latency in process
(``FeatureStore.get_online_features``) and through ``feast serve`` (one worker, ``POST
/get-online-features`` over one keep-alive connection). Memory: the RSS a process gains when our
store loads the artifact, against the artifact's bytes; Redis ``used_memory`` and the sqlite
file against the vectors they hold. Every store's vectors are checked equal to ours first.

Usage: ``python -m bench.feast_bench [--quick] [--out bench_out/feast]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.serving_fixture import fake_dataset, fake_run
from recsys.export import export_run, load_artifact
from recsys.serving.feast_materialize import materialize
from recsys.serving.feast_repo import artifact_fields, init_repo
from recsys.serving.feast_store import RecsysOnlineStore
from recsys.serving.store import Store
from tests.feast_support import RedisServer, apply_in_process, free_port, start_feast_serve, stop_feast_serve, wait_feast_serve

SIZES = (1, 64, 512)
RSS_PROBE = """
import json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from feast import FeatureStore
fs = FeatureStore(repo_path=sys.argv[1])
field = sys.argv[2]
import recsys.serving.feast_store, recsys.serving.store, torchrec  # imports warmed up before the baseline
before = rss()
fs.get_online_features(features=[f"{field}:{field}_embedding"], entity_rows=[{field: "x"}])
print(json.dumps({"before": before, "after": rss()}))
"""


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def _requests(pool: list[str], rounds: int, seed: int) -> dict[int, list[list[str]]]:
    rng = np.random.default_rng(seed)
    return {n: [[pool[i] for i in rng.integers(0, len(pool), n)] for _ in range(rounds)] for n in SIZES}


def in_process(fs, field: str, reqs: dict[int, list[list[str]]], warmup: int) -> dict[int, dict]:  # type: ignore[no-untyped-def]
    out = {}
    ref = [f"{field}:{field}_embedding"]
    for n, batches in reqs.items():
        times = []
        for k, values in enumerate(batches):
            t = time.perf_counter()
            fs.get_online_features(features=ref, entity_rows=[{field: v} for v in values])
            if k >= warmup:
                times.append(time.perf_counter() - t)
        out[n] = _percentiles(times)
    return out


def breakdown(fs, store: Store, field: str, values: list[str], rounds: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median ms of each layer for one request of ``values``: the lookup, our ``online_read``,
    ``get_online_features`` and with ``to_dict()``."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    ours, view, name = RecsysOnlineStore(), fs.get_feature_view(field), f"{field}_embedding"
    keys = [EntityKey(join_keys=[field], entity_values=[Value(string_val=v)]) for v in values]
    rows, ref, pairs = [{field: v} for v in values], [f"{field}:{name}"], [(field, v) for v in values]
    steps = {
        "lookup": lambda: store.embeddings(pairs),
        "online_read": lambda: ours.online_read(fs.config, view, keys, [name]),
        "get_online_features": lambda: fs.get_online_features(features=ref, entity_rows=rows),
        "get_online_features_to_dict": lambda: fs.get_online_features(features=ref, entity_rows=rows).to_dict(),
    }
    out = {}
    for step, fn in steps.items():
        fn()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[step] = float(np.median(times) * 1e3)
    ours.teardown(fs.config, [], [])
    return out


def over_http(repo: Path, field: str, reqs: dict[int, list[list[str]]], warmup: int) -> dict[int, dict]:
    port = free_port()
    proc = start_feast_serve(repo, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_feast_serve(url, proc)
        out = {}
        with httpx.Client(base_url=url, timeout=60) as client:
            for n, batches in reqs.items():
                times = []
                for k, values in enumerate(batches):
                    t = time.perf_counter()
                    r = client.post("/get-online-features", json={"features": [f"{field}:{field}_embedding"], "entities": {field: values}})
                    r.raise_for_status()
                    if k >= warmup:
                        times.append(time.perf_counter() - t)
                out[n] = _percentiles(times)
        return out
    finally:
        stop_feast_serve(proc)


def rss_gain(repo: Path, field: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(repo), field], capture_output=True, text=True, env=env, check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return int(r["after"] - r["before"])


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    work = out / "work"
    data, run_dir, art = work / "data", work / "run", work / "artifact"
    if not (art / "manifest.json").exists():
        fake_dataset(data, scale=args.scale)
        fake_run(data, run_dir, args.method, compression=args.compression)
        export_run(run_dir, art, dtype=args.dtype, overwrite=True)
    store = Store(load_artifact(art))
    spec_fields = json.loads((data / "dataset.json").read_text())["fields"]
    distinct = {f["name"]: f["num_distinct"] for f in spec_fields if f["kind"] == "sparse"}
    values = work / "values.csv"
    with open(values, "w") as f:
        f.write("feature,value\n")
        for name, n in distinct.items():
            f.writelines(f"{name},{name}_{k}\n" for k in range(min(n, args.per_field)))
    pool = [f"{args.field}_{k}" for k in range(min(distinct[args.field], args.per_field))]
    reqs = _requests(pool, args.rounds + args.warmup, seed=0)
    fields = artifact_fields(store)
    redis = RedisServer()
    report: dict = {
        "method": args.method,
        "compression": args.compression,
        "dtype": args.dtype,
        "scale": args.scale,
        "field": args.field,
        "per_field": args.per_field,
        "rounds": args.rounds,
        "load_before": os.getloadavg(),
        "artifact_bytes": _dir_bytes(art),
        "vocabulary_values": sum(distinct.values()),
    }
    try:
        repos, stores = {}, {}
        for kind in ("recsys", "sqlite", "redis"):
            repo = init_repo(
                str(art.resolve()),
                work / f"repo-{kind}",
                fields,
                online=kind,
                redis=redis.connection,  # type: ignore[arg-type]
                poll_interval_s=0,
                overwrite=True,
            )
            repos[kind], stores[kind] = repo, apply_in_process(repo)
            if kind != "recsys":
                t = time.perf_counter()
                m = materialize(store, repo, values, progress=False)
                report[f"materialize_{kind}"] = {
                    "vectors": m.total,
                    "seconds": time.perf_counter() - t,
                    "vectors_per_s": m.total / (time.perf_counter() - t),
                }
        sample = reqs[512][0]
        ref = [f"{args.field}:{args.field}_embedding"]
        want = stores["recsys"].get_online_features(features=ref, entity_rows=[{args.field: v} for v in sample]).to_dict()
        for kind in ("sqlite", "redis"):
            got = stores[kind].get_online_features(features=ref, entity_rows=[{args.field: v} for v in sample]).to_dict()
            assert np.array_equal(np.array(got[ref[0].split(":")[1]], np.float32), np.array(want[ref[0].split(":")[1]], np.float32)), kind
        report["in_process"] = {k: in_process(stores[k], args.field, reqs, args.warmup) for k in repos}
        report["breakdown_512"] = breakdown(stores["recsys"], store, args.field, reqs[512][0], args.rounds)
        if not args.skip_http:
            report["http"] = {k: over_http(repos[k], args.field, reqs, args.warmup) for k in repos}
        report["memory"] = {
            "recsys_rss_gain_bytes": rss_gain(repos["recsys"], args.field),
            "redis_used_memory_bytes": int(redis.client.info("memory")["used_memory"]),
            "redis_keys": int(redis.client.dbsize()),
            "sqlite_file_bytes": (repos["sqlite"] / "data" / "online.db").stat().st_size,
            "materialized_vectors": report["materialize_redis"]["vectors"],
        }
    finally:
        redis.stop()
    report["load_after"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "feast_bench.json").write_text(json.dumps(report, indent=1))
    (out / "feast_bench.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    lines = [
        f"Artifact: `{r['method']}` at {r['compression']}x, {r['dtype']}, {r['vocabulary_values']:,} vocabulary values "
        f"({r['artifact_bytes'] / 2**20:.1f} MiB); sqlite and Redis hold {r['memory']['materialized_vectors']:,} of them "
        f"(<= {r['per_field']:,} per field). Requests: n entities of field {r['field']}, {r['rounds']} rounds each. "
        f"Load average before/after: {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}.",
        "",
        "| path | store | 1: p50 / p99 ms | 64: p50 / p99 ms | 512: p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for path in ("in_process", "http"):
        for kind, res in r.get(path, {}).items():
            cells = " | ".join(f"{res[n]['p50_ms']:.2f} / {res[n]['p99_ms']:.2f}" for n in SIZES)
            lines.append(f"| {path.replace('_', ' ')} | {kind} | {cells} |")
    b = r["breakdown_512"]
    lines += [
        "",
        f"One request of 512 entities, median ms: the lookup (`Store.embeddings`) {b['lookup']:.2f}, our `online_read` "
        f"{b['online_read']:.2f}, `get_online_features` {b['get_online_features']:.2f}, with `to_dict()` "
        f"{b['get_online_features_to_dict']:.2f}.",
    ]
    m = r["memory"]
    lines += [
        "",
        f"Memory: our store's process gains {m['recsys_rss_gain_bytes'] / 2**20:.1f} MiB loading the artifact "
        f"({m['recsys_rss_gain_bytes'] / r['artifact_bytes']:.2f}x its {r['artifact_bytes'] / 2**20:.1f} MiB) and answers "
        f"every value; Redis used_memory {m['redis_used_memory_bytes'] / 2**20:.1f} MiB for {m['materialized_vectors']:,} "
        f"vectors ({m['redis_used_memory_bytes'] / max(m['materialized_vectors'], 1):.0f} B each); the sqlite file "
        f"{m['sqlite_file_bytes'] / 2**20:.1f} MiB ({m['sqlite_file_bytes'] / max(m['materialized_vectors'], 1):.0f} B each).",
        f"Materialization: sqlite {r['materialize_sqlite']['vectors_per_s']:,.0f} vectors/s, "
        f"Redis {r['materialize_redis']['vectors_per_s']:,.0f} vectors/s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/feast")
    p.add_argument("--quick", action="store_true", help="50 rounds, 2,000 values per field, scale 0.01")
    p.add_argument("--method", default="hash")
    p.add_argument("--compression", type=float, default=10.0)
    p.add_argument("--dtype", default="int8", choices=["fp32", "fp16", "int8", "int4"])
    p.add_argument("--scale", type=float, default=0.05, help="multiplies the large Criteo cardinalities")
    p.add_argument("--per-field", type=int, default=20_000, help="values of each field materialized into sqlite and Redis")
    p.add_argument("--field", default="C3", help="the field the requests read")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--skip-http", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.per_field, args.scale = 50, 2_000, 0.01
    run(args)


if __name__ == "__main__":
    main()
