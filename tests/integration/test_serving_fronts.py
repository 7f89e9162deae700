"""Slow and greedy clients on every HTTP front (uvicorn, granian, granian-rsgi) of a real service on 127.0.0.1:
idle and slow-header connections are closed, slow bodies get 408, requests beyond the in-flight
limit get 503 (and beyond the connection limit on uvicorn), the bearer token guards the API.
Every client here is bounded: it gives up long before a test timeout."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from recsys.export import export_run
from recsys.serving.idsv1 import CONTENT_TYPE as IDS_V1
from recsys.serving.idsv1 import encode, vectors
from recsys.serving.store import Store
from tests.serving_support import ROOT, ensure_runs

HEADER_S, BODY_S, KEEP_ALIVE_S, MAX_INFLIGHT, MAX_CONNECTIONS = 1.5, 1.0, 1.0, 2, 12
TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["uvicorn", "uvicorn-lean", "granian", "granian-rsgi"])
def server(request, tmp_path_factory):
    _, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    art = tmp_path_factory.mktemp(f"fronts-{request.param}") / "hash-fp32"
    export_run(runs["hash"], art, dtype="fp32")
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "serve",
        "--model",
        str(art),
        "--port",
        str(port),
        "--server",
        request.param,
        "--token",
        TOKEN,
        "--poll-interval",
        "0",
        "--header-timeout",
        str(HEADER_S),
        "--body-timeout",
        str(BODY_S),
        "--keep-alive",
        str(KEEP_ALIVE_S),
        "--max-inflight",
        str(MAX_INFLIGHT),
        "--max-connections",
        str(MAX_CONNECTIONS),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield {"front": request.param, "port": port, "url": url, "store": Store.open(art)}
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=30)[0]
    assert "stopped serving" in output, output
    assert "gc.freeze(): " in output, output  # the model's heap is out of the collector's reach on every front


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)  # bounded: no read waits longer
    return s


def _closed_within(s: socket.socket, seconds: float) -> tuple[float, bytes]:
    """(seconds until the server closed ``s``, what it sent first); fails if still open after ``seconds``."""
    start, data = time.monotonic(), b""
    s.settimeout(seconds)
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {seconds} s")
    return time.monotonic() - start, data


def test_token_and_ids_v1_on_the_front(server):
    store, feature = server["store"], server["store"].features[1]
    with httpx.Client(base_url=server["url"], timeout=10) as client:
        body = encode({feature: [f"{feature}_{k}" for k in range(20)]})
        assert client.post("/v1/embeddings", content=body, headers={"content-type": IDS_V1}).status_code == 401
        assert client.get("/metrics").status_code == 401
        r = client.post("/v1/embeddings", content=body, headers={"content-type": IDS_V1, **AUTH})
        assert r.status_code == 200
        np.testing.assert_array_equal(vectors(r.content, r.headers), store.lookup(feature, [f"{feature}_{k}" for k in range(20)]))
        wrong = {"content-type": IDS_V1, "authorization": "Bearer wrong"}
        assert client.post("/v1/embeddings", content=body, headers=wrong).status_code == 401
        for pair, status in (
            ([("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")], 401),
            ([("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")], 200),
        ):
            headers = [("content-type", IDS_V1), *pair]  # a repeated header counts by its first value
            assert client.post("/v1/embeddings", content=body, headers=headers).status_code == status
        assert client.get("/healthz").status_code == 200


def test_idle_and_slow_header_connections_are_closed(server):
    port = server["port"]
    idle = [_connect(port) for _ in range(20)]  # open, never send a byte
    slow = _connect(port)
    slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
    stop = time.monotonic() + 10
    sent_until_closed = True
    while time.monotonic() < stop:  # a header line every 0.2 s, for at most 10 s
        try:
            slow.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
        time.sleep(0.2)
    else:
        sent_until_closed = False
    assert sent_until_closed, "the slow-header connection stayed open for 10 s"
    _, first = _closed_within(slow, 5)
    if server["front"] in ("uvicorn", "uvicorn-lean"):  # granian (hyper) closes without an answer
        assert first.startswith(b"HTTP/1.1 408"), first
    for s in idle:
        took, data = _closed_within(s, HEADER_S + 5)
        assert data in (b"",) or data.startswith(b"HTTP/1.1 408"), data
    after = _connect(port)  # a keep-alive connection that answered once, then idles
    after.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert after.recv(4096).startswith(b"HTTP/1.1 200")
    took, _ = _closed_within(after, max(KEEP_ALIVE_S, HEADER_S) + 5)
    assert took >= min(KEEP_ALIVE_S, HEADER_S) - 0.3, took


def _slow_body(port: int) -> socket.socket:
    s = _connect(port)
    s.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"items"'
    )
    return s


def test_slow_bodies_get_408_and_the_inflight_limit_503(server):
    port = server["port"]
    held = [_slow_body(port) for _ in range(MAX_INFLIGHT)]  # each holds an in-flight slot while its body is late
    time.sleep(0.3)
    with httpx.Client(base_url=server["url"], timeout=10, headers=AUTH) as client:
        items = {"items": [{"feature": server["store"].features[0], "value": "a"}]}
        r = client.post("/v1/embeddings", json=items)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and f"more than {MAX_INFLIGHT}" in r.json()["detail"]
        for s in held:
            took, data = _closed_within(s, BODY_S + 5)
            assert data.startswith(b"HTTP/1.1 408") and b"not received within" in data, data
        assert client.post("/v1/embeddings", json=items).status_code == 200  # the slots are free again


def test_ids_v1_bodies_keep_the_limits(server):
    """ids.v1 requests (answered without the ASGI layers on granian-rsgi): 408 for a late body, 503
    beyond the in-flight limit, 413 for a declared body over the limit, then 200 again."""
    port, feature = server["port"], server["store"].features[0]
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: " + IDS_V1.encode() + b"\r\n"
    held = []
    for _ in range(MAX_INFLIGHT):
        s = _connect(port)
        s.sendall(head + b"Content-Length: 200\r\n\r\nRIDS")
        held.append(s)
    time.sleep(0.3)
    body = encode({feature: ["a", "b"]})
    with httpx.Client(base_url=server["url"], timeout=10, headers={**AUTH, "content-type": IDS_V1}) as client:
        r = client.post("/v1/embeddings", content=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and f"more than {MAX_INFLIGHT}" in r.json()["detail"]
        for s in held:
            took, data = _closed_within(s, BODY_S + 5)
            assert data.startswith(b"HTTP/1.1 408") and b"not received within" in data, data
        s = _connect(port)
        s.sendall(head + b"Content-Length: 999999999\r\n\r\nRIDS")
        took, data = _closed_within(s, 10)
        assert data.startswith(b"HTTP/1.1 413") and b"too large" in data, data
        r = client.post("/v1/embeddings", content=body)
        assert r.status_code == 200 and vectors(r.content, r.headers).shape == (2, server["store"].width)


def test_uvicorn_answers_503_beyond_the_connection_limit(server):
    if server["front"] not in ("uvicorn", "uvicorn-lean"):
        pytest.skip("granian queues requests beyond its backpressure limit instead of answering 503")
    port = server["port"]
    conns = [_connect(port) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        s = conns[-1]
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        for c in conns:
            c.close()
    deadline = time.time() + 5
    while time.time() < deadline:  # the server notices the closed connections
        if httpx.get(server["url"] + "/healthz", timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    pytest.fail("still 503 after the connections closed")


def test_a_slow_client_does_not_stall_the_others(server):
    """While slow clients hold connections, normal requests keep being answered promptly."""
    port, feature = server["port"], server["store"].features[0]
    slow = [_connect(port) for _ in range(4)]
    for s in slow:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
    took, errors = [], []

    def client() -> None:
        with httpx.Client(base_url=server["url"], timeout=5, headers=AUTH) as c:
            for _ in range(20):
                t = time.perf_counter()
                r = c.post("/v1/embeddings", json={"items": [{"feature": feature, "value": "x"}]})
                took.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(r.status_code)

    t = threading.Thread(target=client)
    t.start()
    t.join(30)
    for s in slow:
        s.close()
    assert not errors and len(took) == 20, errors
    assert sorted(took)[10] < 0.5, took


def _answers(s: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` HTTP answers read from ``s`` in order: (status, body) each (Content-Length framed)."""
    data, out = b"", []
    s.settimeout(10)
    while len(out) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(data) >= head_end + 4 + length:
                out.append((int(head.split()[1]), data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = s.recv(65536)
        assert chunk, f"closed after {len(out)} answers"
        data += chunk
    return out


def test_pipelined_lookups_are_answered_in_order_and_the_idle_timer_counts_from_the_last(server):
    """Two ids.v1 lookups and a health check sent in one write come back in order, with the right
    rows (on uvicorn-lean the lookups take the compiled recogniser, the health check the parser);
    a lookup 0.6 s later keeps the connection, which then closes about ``keep_alive_s`` after that
    last answer (uvicorn-lean re-arms one idle timer instead of one per request)."""
    store, feature = server["store"], server["store"].features[2]
    body = encode({feature: ["a", "b", None]})
    expected = store.lookup(feature, ["a", "b", None])
    head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {IDS_V1}\r\n".encode()
    lookup = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    s = _connect(server["port"])
    s.sendall(lookup + lookup + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    (a, ra), (b, rb), (c, _) = _answers(s, 3)
    assert (a, b, c) == (200, 200, 200)
    for raw in (ra, rb):
        np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(expected.shape), expected)
    time.sleep(0.6)
    s.sendall(lookup)
    assert _answers(s, 1)[0][0] == 200
    took, _ = _closed_within(s, max(KEEP_ALIVE_S, HEADER_S) + 5)
    assert took >= min(KEEP_ALIVE_S, HEADER_S) - 0.3, took
