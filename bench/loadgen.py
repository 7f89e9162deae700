"""The compiled load generator (``bench/loadgen.c``) from Python: build it, write its request file, run it.

``binary()`` compiles ``loadgen.c`` with ``cc -O2`` into ``bench_out/`` on first use (again when the
source is newer); ``write_requests`` writes the pre-built requests of both targets from the same
random batches as ``bench.serving_load`` (ids.v1 POSTs for our service, ``MGET`` for Redis, so both
return the same vectors); ``run`` drives one target and returns the Python generator's row keys
(requests/s, vectors/s, p50/p99/max ms, errors) beside the C program's own fields.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

from bench.serving_load import batches, http_request, redis_command

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).with_name("loadgen.c")
MISSING_CC = "the compiled load generator needs a C compiler: apt-get install -y gcc (or run with --loadgen python)"


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def binary(out: Path = ROOT / "bench_out") -> Path:
    """The built load generator, compiled from ``loadgen.c`` when missing or older than the source."""
    exe = out / "loadgen"
    if exe.exists() and exe.stat().st_mtime >= SOURCE.stat().st_mtime:
        return exe
    cc = compiler()
    if cc is None:
        raise RuntimeError(MISSING_CC)
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(SOURCE), "-lm"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cc could not build {SOURCE}:\n{res.stderr}")
    return exe


def write_requests(path: Path, target: str, pool: list[list], ids: int, connections: int) -> Path:
    """The request file (u32 length + bytes per record) of ``connections`` × 256 batches of ``ids``
    entries ``[feature, value, raw id]``: connection k's batches as ``bench.serving_load`` draws them."""
    encode = redis_command if target == "redis" else http_request
    with open(path, "wb") as f:
        for k in range(connections):
            for batch in batches(pool, ids, 1000 * k + ids):
                record = encode(batch)
                f.write(struct.pack("<I", len(record)) + record)
    return path


def command(exe: Path, target: str, port: int, requests: Path, ids: int, connections: int, duration: float, warmup: float,
            rate: float = 0.0, dim: int = 16, timeout: float = 10.0) -> list[str]:  # fmt: skip
    """The load generator's command line (``target`` ``http`` or ``redis``; rate 0: closed loop)."""
    return [str(exe), target, str(port), str(requests), str(connections), f"{duration:g}", f"{warmup:g}", f"{rate:.3f}",
            str(4 * dim * ids), str(ids), f"{timeout:g}"]  # fmt: skip


def row(out: dict, target: str, ids: int, connections: int, rate: float) -> dict:
    """The C program's JSON line with the Python generator's keys added."""
    seconds = out["seconds"]
    return {
        "target": target + ("-ids" if target == "http" else ""),
        "ids": ids,
        "load": f"open {rate:g}/s" if rate else "closed",
        "concurrency": connections,
        "generator": "c",
        **out,
        "requests_per_s": out["requests"] / seconds,
        "vectors_per_s": out["vectors"] / seconds,
        "p50_ms": out["p50_us"] / 1e3,
        "p99_ms": out["p99_us"] / 1e3,
        "max_ms": out["max_us"] / 1e3,
        "client_core_use": out["client_cpu_s"] / out["wall_s"],
    }


def run(cmd: list[str], target: str, ids: int, connections: int, rate: float = 0.0) -> dict:
    """Run ``cmd`` (``command``'s line, perhaps behind ``taskset``) and return its ``row``."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"loadgen failed ({res.returncode}): {res.stderr.strip()}")
    return row(json.loads(res.stdout.strip().splitlines()[-1]), target, ids, connections, rate)
