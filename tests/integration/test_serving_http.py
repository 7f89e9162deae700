"""The real HTTP service on 127.0.0.1 (a subprocess, on uvicorn and on granian-rsgi): equality
with the in-process layer (ids.v1 bodies included), fuzzing (surrogates, BOMs, duplicate headers,
malformed ids.v1 included), hot swap under load, corrupted, FIFO and other-interface artifacts
refused visibly, timestamped logs, graceful shutdown, no `training` import."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from recsys.export import export_run, load_artifact
from recsys.hashing import hash64_strings
from recsys.serving.idsv1 import CONTENT_TYPE as IDS_V1
from recsys.serving.idsv1 import encode, vectors
from recsys.serving.store import Store
from tests.fuzz_bodies import ENDPOINTS, LONE, RAW_LONE, malformed_request, raw_http, surrogate_bodies
from tests.serving_support import ROOT, ensure_runs, free_port, wait_ready

MAX_ITEMS = 1024
MAX_BODY = 256 * 1024
WRAPPER = """
import json, sys, threading, time
out = sys.argv.pop(1)

def report():
    while True:
        with open(out + ".tmp", "w") as f:
            f.write(json.dumps(sorted(m for m in list(sys.modules) if m.startswith("recsys.training"))))
        __import__("os").replace(out + ".tmp", out)
        time.sleep(0.3)

threading.Thread(target=report, daemon=True).start()
from recsys.cli import main
sys.exit(main(sys.argv[1:]))
"""  # the service, plus a thread reporting which `recsys.training` modules it has imported


def _label(folder: Path) -> str:
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()[:12]


def _point(link: Path, target: Path) -> None:
    """Atomically repoint the ``current`` symlink (how a new artifact is published)."""
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.fixture(scope="module", params=["uvicorn", "uvicorn-lean", "granian-rsgi"])  # granian's ASGI front: test_serving_fronts
def service(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "serving-runs"
    _, runs = ensure_runs(base)
    front = request.param
    root = tmp_path_factory.mktemp(f"served-{front}")
    a, b = root / "a-hash-fp32", root / "b-full-int8"
    export_run(runs["hash"], a, dtype="fp32")
    export_run(runs["full"], b, dtype="int8")
    corrupt = root / "c-corrupt"
    shutil.copytree(a, corrupt)
    raw = bytearray((corrupt / "dense.safetensors").read_bytes())
    raw[-3] ^= 0x55
    (corrupt / "dense.safetensors").write_bytes(bytes(raw))
    fifo = root / "d-fifo"  # a table file that is a FIFO: opening it for reading would block
    shutil.copytree(a, fifo)
    (fifo / "embedding.safetensors").unlink()
    os.mkfifo(fifo / "embedding.safetensors")
    dim8 = root / "e-hash-dim8"  # another interface: vectors of 8, not 16
    export_run(runs["hash-dim8"], dim8, dtype="fp32")
    link = root / "current"
    _point(link, a)
    port, modules = free_port(), root / "training-modules.json"
    cmd = [
        sys.executable,
        "-c",
        WRAPPER,
        str(modules),
        "serve",
        "--model",
        str(link),
        "--port",
        str(port),
        "--poll-interval",
        "0.2",
        "--max-items",
        str(MAX_ITEMS),
        "--max-body-bytes",
        str(MAX_BODY),
        "--log-level",
        "info",
        "--server",
        front,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout=120, interval=0.2)
    stores = {_label(p): Store(load_artifact(p), _label(p)) for p in (a, b)}
    yield {
        "url": url,
        "proc": proc,
        "link": link,
        "a": a,
        "b": b,
        "corrupt": corrupt,
        "fifo": fifo,
        "dim8": dim8,
        "stores": stores,
        "modules": modules,
        "front": front,
    }
    proc.send_signal(signal.SIGTERM)
    try:
        output = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once shut down
    assert "stopped serving" in output, output  # graceful shutdown completed (the app's shutdown ran)
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    ours = [line for line in output.splitlines() if " recsys.serving." in line]  # our loggers' lines: all timestamped
    assert ours and all(re.match(stamp + r"(INFO|WARNING|ERROR) recsys\.serving\.", line) for line in ours), output[-5000:]
    loaded = re.findall(stamp + r"INFO recsys\.serving\.reload: loaded version (\w+) ", output, re.M)  # every load, at INFO
    assert loaded[0] == _label(a), output[-5000:]
    if str(corrupt) in output:  # the refused copy is named by its folder, not by a's id alone
        refusal = re.search(
            stamp + r"ERROR recsys\.serving\.reload: not serving (\S+) \(manifest (\w+)\) \(refused\): .*checksum mismatch.*; "
            r"still serving version (\w+)$",
            output,
            re.M,
        )
        assert refusal and refusal[1] == str(corrupt) and refusal[3] == _label(b), output[-5000:]
    assert json.loads(modules.read_text()) == [], "the service imported training modules"


def _items(store: Store, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "feature": rng.choice(store.features),
            "value": rng.choice([f"C{rng.randint(1, 8)}_{rng.randint(0, 50)}", "unseen", None, rng.randint(0, 99)]),
        }
        for _ in range(n)
    ]


def test_endpoints_equal_the_in_process_layer(service):
    url, store = service["url"], service["stores"][_label(service["a"])]
    with httpx.Client(base_url=url, timeout=10) as client:
        items = _items(store, 64, seed=0)
        r = client.post("/v1/embeddings", json={"items": items})
        assert r.status_code == 200 and r.json()["version"] == store.version
        expected = store.embeddings([(i["feature"], i["value"]) for i in items])
        np.testing.assert_array_equal(np.array(r.json()["vectors"], np.float32), expected)
        binary = client.post("/v1/embeddings", json={"items": items}, headers={"accept": "application/octet-stream"})
        assert (binary.headers["content-type"], binary.headers["x-model-version"]) == ("application/octet-stream", store.version)
        shape = (int(binary.headers["x-embedding-count"]), int(binary.headers["x-embedding-dim"]))
        np.testing.assert_array_equal(np.frombuffer(binary.content, "<f4").reshape(shape), expected)
        big = _items(store, 700, seed=3)  # the bulk JSON formatter: exact float32 too
        r = client.post("/v1/embeddings", json={"items": big})
        np.testing.assert_array_equal(np.array(r.json()["vectors"], np.float32), store.embeddings([(i["feature"], i["value"]) for i in big]))
        _check_ids_v1(client, store)
        r = client.post("/v1/embeddings", json={"items": [{"feature": "C1", "value": "a"}, {"feature": "nope", "value": "b"}]})
        assert r.status_code == 422 and "unknown sparse feature 'nope'" in r.json()["detail"]
        r = client.post("/v1/embeddings", content=json.dumps({"items": items}), headers={"content-type": "text/plain"})
        assert r.status_code == 415
        entities = [{"C1": "C1_1", "C5": "C5_3"}, {"C8": "unseen"}]
        r = client.post("/v1/embeddings", json={"entities": entities})
        for got, want in zip(r.json()["entities"], store.entities(entities)):
            assert set(got) == set(want)
            for k in got:
                np.testing.assert_array_equal(np.array(got[k], np.float32), want[k])
        requests = [{"dense": {"I1": 3, "I2": None, "I3": -2.5}, "sparse": {"C1": "C1_0", "C4": "unseen"}}, {}]
        r = client.post("/v1/score", json={"requests": requests})
        np.testing.assert_array_equal(np.array(r.json()["scores"], np.float32), store.score(requests))
        meta = client.get("/v1/metadata").json()
        assert meta["method"] == "hash" and meta["dtype"] == "fp32" and meta["version"] == store.version
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
        assert 'recsys_http_requests_total{path="/v1/embeddings",status="200"}' in client.get("/metrics").text


def _check_ids_v1(client: httpx.Client, store: Store) -> None:
    """ids.v1 bodies (raw ids and strings): the vectors of ``Store.lookup`` bit for bit; 400/422 errors."""
    rng = np.random.default_rng(4)
    texts = {f: [f"{f}_{k}" if k < 40 else ("unseen" if k < 45 else "") for k in rng.integers(0, 50, 100)] for f in store.features[:3]}
    blocks = {store.features[0]: hash64_strings(texts[store.features[0]]), **{f: texts[f] for f in store.features[1:3]}}
    expected = np.concatenate([store.lookup(f, v) for f, v in blocks.items()])
    pairs = [(f, t) for f in store.features[:3] for t in texts[f]]
    assert np.array_equal(expected.view(np.uint32), store.embeddings(pairs).view(np.uint32))
    r = client.post("/v1/embeddings", content=encode(blocks), headers={"content-type": IDS_V1})
    assert r.status_code == 200 and r.headers["x-model-version"] == store.version, r.text
    assert np.array_equal(vectors(r.content, r.headers).view(np.uint32), expected.view(np.uint32))
    r = client.post("/v1/embeddings", content=encode(blocks), headers={"content-type": IDS_V1, "accept": "application/json"})
    assert np.array_equal(np.array(r.json()["vectors"], np.float32).view(np.uint32), expected.view(np.uint32))
    body = encode(blocks)
    r = client.post("/v1/embeddings", content=body[:-5], headers={"content-type": IDS_V1})
    assert r.status_code == 400 and f"truncated at offset {len(body) - 5}" in r.json()["detail"] and store.features[2] in r.json()["detail"]
    r = client.post("/v1/embeddings", content=encode({"nope": np.arange(2)}), headers={"content-type": IDS_V1})
    assert r.status_code == 422 and "unknown sparse feature 'nope'" in r.json()["detail"]


def test_fuzz_malformed_requests_get_only_4xx(service):
    rng = random.Random(1234)
    features = service["stores"][_label(service["a"])].features
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=service["url"], timeout=30) as client:
        for _ in range(600):  # per front
            path, body, ctype = malformed_request(rng, features, MAX_ITEMS)
            r = client.post(path, content=body, headers={"content-type": ctype})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert 400 <= r.status_code < 500, (path, str(body)[:300], r.status_code, r.text[:300])
        assert client.get("/healthz").status_code == 200
    assert service["proc"].poll() is None
    assert {413, 422} <= set(statuses)


def test_fuzz_surrogates_boms_and_duplicate_headers_get_no_5xx(service):
    """Lone surrogates (escaped and raw), byte-order marks, other encodings and duplicate headers on every
    endpoint: malformed bodies get 4xx, and nothing gets a 5xx."""
    store = service["stores"][_label(service["a"])]
    f = store.features[0]
    valid = {
        "/v1/embeddings": json.dumps({"items": [{"feature": f, "value": "v"}]}).encode(),
        "/v1/score": json.dumps({"requests": [{"sparse": {f: "v"}}]}).encode(),
    }
    malformed = surrogate_bodies(store.features)
    for path, body in valid.items():
        text = body.decode()
        malformed += [
            (path, b"\xef\xbb\xbf" + body),
            (path, text.encode("utf-16")),
            (path, text.encode("utf-16-le")),
            (path, text.encode("utf-32")),
            (path, b"\xef\xbb\xbf"),
            (path, b"\xfe\xff" + text.encode("utf-16-be")),
        ]
    duplicated = [
        [("content-type", "text/plain"), ("content-type", "application/json")],
        [("content-type", "application/json; charset=utf-16"), ("content-type", "application/json")],
        [("accept", "application/octet-stream"), ("accept", "application/json")],
        [("authorization", "Bearer a"), ("authorization", "Bearer b")],
        [("x-probe", b"\xed\xa0\x80"), ("x-probe", b"\xef\xbb\xbf")],
    ]
    statuses: dict[int, int] = {}
    count = 0

    def check(r: httpx.Response, must_refuse: bool, what: str) -> None:
        nonlocal count
        count += 1
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (what, r.status_code, r.text[:300])
        if must_refuse:
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])

    with httpx.Client(base_url=service["url"], timeout=30) as client:
        for path, body in malformed:
            check(client.post(path, content=body, headers={"content-type": "application/json"}), True, (path, body[:200]))
        for method, path in ENDPOINTS:
            body = valid.get(path, b"")
            for headers in duplicated:
                check(client.request(method, path, content=body, headers=headers), False, (path, headers))
            for lone in LONE + ["%ED%A0%80", "%EF%BB%BF"]:  # in the query string and the path
                check(client.request(method, f"{path}?v={lone}", content=body, headers={"content-type": "application/json"}), False, (path, lone))
                check(client.request(method, f"{path}/{lone}", content=body, headers={"content-type": "application/json"}), False, (path, lone))
            if method == "GET":
                check(client.request("GET", path, headers={"content-type": "application/json"}, content=b"\xef\xbb\xbf" + RAW_LONE[0]), False, path)
        duplicate_length = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(valid["/v1/embeddings"]), 3) + valid["/v1/embeddings"]
        )
        chunked_and_length = (
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n"
        )
        for raw in (duplicate_length, chunked_and_length):
            status = raw_http(service["url"], raw)
            count += 1
            assert 400 <= status < 500, (raw[:120], status)
        assert client.get("/healthz").status_code == 200
    assert service["proc"].poll() is None
    assert count >= 250 and statuses.get(422, 0) >= len(malformed) * 0.8, statuses


def test_hot_swap_under_load_loses_no_request(service):
    url, stores = service["url"], service["stores"]
    old, new = _label(service["a"]), _label(service["b"])
    items = _items(stores[old], 32, seed=7)
    pairs = [(i["feature"], i["value"]) for i in items]
    expected = {v: s.embeddings(pairs) for v, s in stores.items()}
    by_feature = {f: [None if v is None else str(v) for g, v in pairs if g == f] for f in dict.fromkeys(f for f, _ in pairs)}
    ids_body = encode(by_feature)  # the same pairs as an ids.v1 body (the lean path on granian-rsgi)
    ids_expected = {v: np.concatenate([s.lookup(f, vals) for f, vals in by_feature.items()]) for v, s in stores.items()}
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            k = 0
            while not stop.is_set():
                k += 1
                try:
                    if k % 2:
                        r = client.post("/v1/embeddings", content=ids_body, headers={"content-type": IDS_V1})
                    else:
                        r = client.post("/v1/embeddings", json={"items": items})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                if k % 2:
                    version, got, want = r.headers["x-model-version"], vectors(r.content, r.headers), ids_expected
                else:
                    version = r.json()["version"]
                    got, want = np.array(r.json()["vectors"], np.float32), expected
                if not np.array_equal(got, want[version]):
                    failures.append(f"wrong vectors for version {version} ({'ids.v1' if k % 2 else 'JSON'})")
                seen[version] = seen.get(version, 0) + 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    _point(service["link"], service["b"])
    deadline = time.time() + 60
    while seen.get(new, 0) < 20 and time.time() < deadline and not failures:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert seen.get(old, 0) > 0 and seen.get(new, 0) >= 20, seen


def test_corrupted_artifact_is_refused_and_old_keeps_serving(service):
    url, current = service["url"], _label(service["b"])
    _point(service["link"], service["b"])
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.time() + 60
        while client.get("/v1/metadata").json()["version"] != current and time.time() < deadline:
            time.sleep(0.1)
        _point(service["link"], service["corrupt"])
        deadline = time.time() + 60
        refused = 0.0
        while refused < 1 and time.time() < deadline:
            time.sleep(0.2)
            for line in client.get("/metrics").text.splitlines():
                if line.startswith('recsys_model_reloads_total{result="refused"}'):
                    refused = float(line.split()[-1])
        assert refused >= 1
        assert client.get("/v1/metadata").json()["version"] == current
        r = client.post("/v1/score", json={"requests": [{"sparse": {"C1": "C1_0"}}]})
        assert r.status_code == 200 and r.json()["version"] == current
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["version"] == current
        reload = ready.json()["reload"]  # the failed reload is visible, named by where the copy lives
        assert reload["state"] == "failed" and reload["last_failure"]["reason"] == "refused"
        assert str(service["corrupt"]) in reload["last_failure"]["source"] and "checksum mismatch" in reload["last_failure"]["error"]
        assert _metric(client, 'recsys_model_reload_failures_total{reason="refused"}') >= 1
        assert _metric(client, "recsys_model_reload_failing") == 1


def _metric(client: httpx.Client, prefix: str) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _wait_reload(client: httpx.Client, failures: int, timeout: float = 60) -> dict:
    """``/readyz``'s reload status once it counts ``failures`` failed loads."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        reload = client.get("/readyz").json()["reload"]
        if reload["failures"] >= failures:
            return reload
        time.sleep(0.1)
    raise AssertionError(f"no {failures} failed reloads within {timeout} s: {reload}")


def test_fifo_and_other_interface_are_refused_then_a_valid_version_loads(service):
    """A FIFO table file is refused at once (it used to block the reload thread forever), a version of
    another dimension is refused (no --allow-interface-change), and a later valid version still loads."""
    with httpx.Client(base_url=service["url"], timeout=30) as client:
        before = client.get("/readyz").json()
        served, failures = before["version"], before["reload"]["failures"]
        _point(service["link"], service["fifo"])
        reload = _wait_reload(client, failures + 1)
        assert reload["last_failure"]["reason"] == "refused" and "is a FIFO" in reload["last_failure"]["error"]
        assert str(service["fifo"] / "embedding.safetensors") in reload["last_failure"]["error"]
        _point(service["link"], service["dim8"])
        reload = _wait_reload(client, failures + 2)
        assert reload["last_failure"]["reason"] == "interface" and "dimension 16 -> 8" in reload["last_failure"]["error"]
        assert _metric(client, 'recsys_model_reload_failures_total{reason="interface"}') == 1
        r = client.post("/v1/embeddings", json={"items": [{"feature": "C1", "value": "x"}]}, headers={"accept": "application/octet-stream"})
        assert r.headers["x-model-version"] == served and r.headers["x-embedding-dim"] == "16"
        target = service["a"] if served != _label(service["a"]) else service["b"]
        _point(service["link"], target)
        deadline = time.time() + 60
        while client.get("/readyz").json()["version"] != _label(target) and time.time() < deadline:
            time.sleep(0.1)
        ready = client.get("/readyz").json()
        assert ready["version"] == _label(target) and ready["reload"]["state"] == "ok"
        assert _metric(client, "recsys_model_reload_failing") == 0


def test_bearer_token_guards_the_api(service):
    from fastapi.testclient import TestClient

    from recsys.serving.app import create_app
    from recsys.serving.reload import ModelHolder
    from recsys.serving.settings import ServeSettings
    from recsys.serving.source import LocalSource

    holder = ModelHolder(LocalSource(service["a"]), poll_interval_s=0)
    holder.load_initial()
    app = create_app(ServeSettings(model=str(service["a"]), token="s3cret", poll_interval_s=0), holder=holder)
    with TestClient(app) as client:
        assert client.get("/v1/metadata").status_code == 401
        assert client.get("/v1/metadata", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/metadata", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/metrics").status_code == 401
        items = {"items": [{"feature": "C1", "value": "a"}]}
        assert client.post("/v1/embeddings", json=items).status_code == 401
        assert client.post("/v1/embeddings", json=items, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/embeddings", json=items, headers={"authorization": "Bearer s3cret"}).status_code == 200
        for pair, status in (
            ([("authorization", "Bearer wrong"), ("authorization", "Bearer s3cret")], 401),
            ([("authorization", "Bearer s3cret"), ("authorization", "Bearer wrong")], 200),
        ):
            # a repeated header counts by its first value, on the fast path as on every route
            assert client.post("/v1/embeddings", json=items, headers=pair).status_code == status
            assert client.get("/v1/metadata", headers=pair).status_code == status
        assert client.get("/healthz").status_code == 200


def test_several_worker_processes_answer_without_nagle_delays(service):
    """``--workers 2``: both processes serve the artifact (JSON and ids.v1 lookups: the lean path of
    each worker); responses are not held back by Nagle's algorithm waiting for delayed ACKs (~40 ms
    each), and SIGTERM stops them gracefully. uvicorn's supervisor and worker app are the same for
    ``uvicorn`` and ``uvicorn-lean``: the lean front stands for both."""
    if service["front"] == "uvicorn":
        pytest.skip("the same supervisor and worker app as uvicorn-lean, which runs this test")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "serve",
        "--model",
        str(service["a"]),
        "--port",
        str(port),
        "--workers",
        "2",
        "--poll-interval",
        "0",
        "--log-level",
        "info",
        "--server",
        service["front"],
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, store = f"http://127.0.0.1:{port}", service["stores"][_label(service["a"])]
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_ready(url, proc, timeout=180, interval=0.3)
        deadline = time.time() + 180  # the other process may still be loading: stop only once both serve
        while sum("recsys.serving.reload: loaded version" in line for line in lines) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert sum("recsys.serving.reload: loaded version" in line for line in lines) == 2, lines
        items = _items(store, 8, seed=11)
        expected = store.embeddings([(i["feature"], i["value"]) for i in items])
        by_feature = {
            f: [None if i["value"] is None else str(i["value"]) for i in items if i["feature"] == f]
            for f in dict.fromkeys(i["feature"] for i in items)
        }
        ids_expected = np.concatenate([store.lookup(f, vals) for f, vals in by_feature.items()])
        took = []
        with httpx.Client(base_url=url, timeout=10) as client:
            for k in range(30):
                start = time.perf_counter()
                if k % 2:
                    r = client.post("/v1/embeddings", content=encode(by_feature), headers={"content-type": IDS_V1})
                else:
                    r = client.post("/v1/embeddings", json={"items": items})
                took.append(time.perf_counter() - start)
                assert r.status_code == 200, r.text
                got = vectors(r.content, r.headers) if k % 2 else np.array(r.json()["vectors"], np.float32)
                np.testing.assert_array_equal(got, ids_expected if k % 2 else expected)
        assert sorted(took)[len(took) // 2] < 0.03, took
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.join(10)
    output = "".join(lines)
    assert output.count("stopped serving") == 2, output
