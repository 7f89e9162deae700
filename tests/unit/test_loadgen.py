"""The compiled load generator (bench/loadgen.c) against real servers on 127.0.0.1: a ``recsys serve``
(granian-rsgi) of a tiny artifact and a ``redis-server`` holding the same vectors, in closed and open
loop; answers that are not what was asked (404, 422, a wrong size, missing keys) count as errors."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time

import pytest

from bench import loadgen
from bench.serving_fixture import wait_for_redis
from recsys.export import export_run
from recsys.hashing import hash64_strings
from recsys.serving.store import Store
from tests.feast_support import RedisServer
from tests.serving_support import ROOT, ensure_runs, free_port, wait_ready

pytestmark = pytest.mark.skipif(loadgen.compiler() is None, reason=loadgen.MISSING_CC)
IDS, CONNS = 16, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    tmp = tmp_path_factory.mktemp("loadgen")
    art = tmp / "hash-fp32"
    export_run(runs["hash"], art, dtype="fp32")
    store = Store.open(art)
    values = [f"v{i}" for i in range(200)]
    pool = [[store.features[i % len(store.features)], v, r] for i, (v, r) in enumerate(zip(values, hash64_strings(values).tolist()))]
    port = free_port()
    cmd = [sys.executable, "-m", "recsys.cli", "serve", "--model", str(art), "--port", str(port), "--server", "granian-rsgi", "--poll-interval", "0"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    redis = RedisServer()
    try:
        wait_for_redis(redis.client)
        vectors = store.embeddings([(f, v) for f, v, _ in pool])
        redis.client.mset({f"{f}:{v}": vectors[i].tobytes() for i, (f, v, _) in enumerate(pool)})
        wait_ready(f"http://127.0.0.1:{port}", server, 120, 0.2)
        yield {"exe": loadgen.binary(tmp), "tmp": tmp, "pool": pool, "dim": int(vectors.shape[1]), "http": port, "redis": redis.port}
    finally:
        redis.stop()
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def _run(s: dict, target: str, port: int, pool: list, rate: float = 0.0, dim: int | None = None, seconds: float = 1.0) -> dict:
    requests = loadgen.write_requests(s["tmp"] / f"{target}-{len(pool)}-{pool[0][1]}.bin", target, pool, IDS, CONNS)
    cmd = loadgen.command(s["exe"], target, port, requests, IDS, CONNS, seconds, 0.2, rate, dim or s["dim"], timeout=2)
    return loadgen.run(cmd, target, IDS, CONNS, rate)


@pytest.mark.parametrize("target", ["http", "redis"])
def test_closed_and_open_loop_answers_are_all_good(setup, target):
    closed = _run(setup, target, setup[target], setup["pool"])
    assert closed["requests"] > 0 and closed["errors"] == 0, closed
    assert closed["vectors"] == closed["requests"] * IDS
    assert 0 < closed["p50_us"] <= closed["p90_us"] <= closed["p99_us"] <= closed["max_us"]
    assert 0 < closed["client_cpu_s"] <= 1.1 * closed["wall_s"] and closed["wall_s"] >= 1.2  # one thread; warm-up + run
    opened = _run(setup, target, setup[target], setup["pool"], rate=200)
    assert opened["errors"] == 0, opened
    assert 120 <= opened["requests"] <= 280, opened  # Poisson arrivals at 200/s for 1 s
    assert opened["vectors"] == opened["requests"] * IDS


def test_wrong_sizes_and_missing_keys_are_errors(setup):
    for target in ("http", "redis"):
        wrong = _run(setup, target, setup[target], setup["pool"], dim=setup["dim"] + 1)  # every answer is 4 × IDS bytes short
        assert wrong["requests"] > 0 and wrong["errors"] == wrong["requests"] and wrong["vectors"] == 0, wrong
    missing = [[f, v + "-absent", r] for f, v, r in setup["pool"]]  # MGET answers nulls
    row = _run(setup, "redis", setup["redis"], missing)
    assert row["requests"] > 0 and row["errors"] == row["requests"], row
    unknown = [["no-such-feature", v, r] for _, v, r in setup["pool"]]  # the service answers 422
    row = _run(setup, "http", setup["http"], unknown)
    assert row["requests"] > 0 and row["errors"] == row["requests"], row


class NotFound(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, Content-Length framing

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = b'{"detail":"Not Found"}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_404_answers_are_counted_as_errors(setup):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        row = _run(setup, "http", server.server_address[1], setup["pool"], seconds=0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert row["requests"] > 0 and row["errors"] == row["requests"] and row["vectors"] == 0, row


class Slow(NotFound):
    """Answers 200 with the expected bytes after ``DELAY`` s, one request at a time."""

    DELAY, SIZE = 0.02, 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        time.sleep(self.DELAY)
        self.send_response(200)
        self.send_header("Content-Length", str(self.SIZE))
        self.end_headers()
        self.wfile.write(b"\0" * self.SIZE)


def test_open_loop_latency_counts_from_the_scheduled_time(setup):
    """200 requests/s for 0.5 s on one connection to a server taking 20 ms each (50/s): the backlog
    grows, and a request's latency includes its wait for the connection (no coordinated omission)."""
    Slow.SIZE = 4 * setup["dim"] * IDS
    server = http.server.HTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        requests = loadgen.write_requests(setup["tmp"] / "slow.bin", "http", setup["pool"], IDS, 1)
        cmd = loadgen.command(setup["exe"], "http", server.server_address[1], requests, IDS, 1, 0.5, 0, 200, setup["dim"], timeout=5)
        row = loadgen.run(cmd, "http", IDS, 1, 200)
    finally:
        server.shutdown()
        server.server_close()
    assert row["errors"] == 0 and 60 <= row["requests"] <= 140, row
    # the last of ~100 requests, scheduled by 0.5 s, is answered near 100 x 20 ms = 2 s: waits of ~1.5 s
    assert row["p99_us"] > 800_000 and row["p50_us"] > 300_000, row
    assert row["wall_s"] > 1.3 * 0.5 and row["client_cpu_s"] < 0.5 * row["wall_s"], row  # it waits in epoll, it does not spin


def test_no_server_is_a_clear_failure(setup):
    with pytest.raises(RuntimeError, match="connect to 127.0.0.1"):
        _run(setup, "redis", free_port(), setup["pool"])
