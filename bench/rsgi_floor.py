"""The floor of the RSGI front on this box: server CPU per request of a granian RSGI app that reads the
body and answers fixed bytes (no lookup, no metrics), with ``recsys serve --server granian-rsgi``'s
granian settings, driven as ``bench.serving_fair`` drives the service (server on core 1, load
generator on core 0, ids.v1 requests, 8 connections). What our 1-id request costs above this is ours.

Usage: ``OMP_NUM_THREADS=1 python -m bench.rsgi_floor [--keys bench_out/serving/keys_ids.json] [--ids 1] [--rounds 3]``
(the keys file is written by ``python -m bench.serving_bench --quick``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.serving_fair import SERVER_CORE, measured, pinned

ROOT = Path(__file__).resolve().parents[1]


class Floor:
    """Reads the body, answers ``RSGI_FLOOR_BYTES`` zero bytes as float32 rows."""

    def __init__(self) -> None:
        self.body = b"\0" * int(os.environ.get("RSGI_FLOOR_BYTES", "64"))
        self.headers = [("content-type", "application/octet-stream")]

    async def __rsgi__(self, scope, proto) -> None:
        await proto()
        proto.response_bytes(200, self.headers, self.body)


def app() -> Floor:
    return Floor()


def serve(port: int) -> None:
    """granian as ``recsys.serving.fronts`` runs it for ``granian-rsgi`` (one worker, one runtime thread, HTTP/1)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels

    Granian("bench.rsgi_floor:app", factory=True, address="127.0.0.1", port=port, interface=Interfaces.RSGI, workers=1, runtime_threads=1,
            loop=Loops.auto, http=HTTPModes.http1, websockets=False, backpressure=1024, log_level=LogLevels.warning).serve()  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", default="bench_out/serving/keys_ids.json")
    p.add_argument("--ids", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RSGI_FLOOR_BYTES": str(64 * args.ids)}
    cmd = pinned(SERVER_CORE, [sys.executable, "-c", f"from bench.rsgi_floor import serve; serve({port})"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # until the worker answers (granian binds before its worker is up)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("POST", "/v1/embeddings", b"")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
        rows = [measured(proc.pid, "http", port, Path(args.keys), args.ids, 8, args.duration, "--ids-format") for _ in range(args.rounds)]
        cpu = statistics.median(r["server_cpu_us_per_request"] for r in rows)
        rate = statistics.median(r["requests_per_s"] for r in rows)
        print(f"RSGI floor, {args.ids} ids: {cpu:.0f} µs server CPU per request (median of {args.rounds}), {rate:,.0f} requests/s, "
              f"errors {sum(r['errors'] for r in rows)}; load average after: {Path('/proc/loadavg').read_text().strip()}")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
