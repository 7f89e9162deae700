"""Request bodies and raw requests for the HTTP fuzz tests: lone surrogates, escaped and raw."""

from __future__ import annotations

import json
import random
import socket

import numpy as np

from recsys.serving.idsv1 import CONTENT_TYPE as IDS_V1
from recsys.serving.idsv1 import encode

ENDPOINTS = [
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/score"),
    ("GET", "/v1/metadata"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]
LONE = ["\\ud800", "\\udfff", "\\udc00\\ud800", "x\\ud83d", "\\ud800\\u0041"]  # JSON escapes of lone surrogates
RAW_LONE = [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"a\xed\xb0\x80b"]  # the UTF-8-like bytes of lone surrogates


def surrogate_bodies(features: list[str]) -> list[tuple[str, bytes]]:
    """``(path, body)`` pairs, each body holding a lone surrogate (escaped or raw) somewhere a string goes."""
    f = features[0]
    shapes = {
        "/v1/embeddings": [
            '{"items": [{"feature": "%s", "value": "@"}]}' % f,
            '{"items": [{"feature": "@", "value": "v"}]}',
            '{"items": [%s{"feature": "%s", "value": "@"}]}' % ('{"feature": "%s", "value": "ok"},' % f * 20, f),
            '{"items": [%s{"feature": "%s", "value": "@"}]}' % ('{"feature": "%s", "value": "ok"},' % f * 300, f),
            '{"entities": [{"%s": "@"}]}' % f,
            '{"entities": [{"@": "v"}]}',
            '{"entities": [{"%s": ["a", "@"]}]}' % f,
            '{"items": [{"feature": "%s", "value": "v"}], "@": 1}' % f,
        ],
        "/v1/score": [
            '{"requests": [{"sparse": {"%s": "@"}}]}' % f,
            '{"requests": [{"sparse": {"@": "v"}}]}',
            '{"requests": [{"dense": {"@": 1.0}}]}',
            '{"requests": [{"sparse": {"%s": ["@"]}}]}' % f,
        ],
    }
    out = []
    for path, templates in shapes.items():
        for t in templates:
            head, tail = t.split("@")
            out += [(path, (head + lone + tail).encode()) for lone in LONE]
            out += [(path, head.encode() + raw + tail.encode()) for raw in RAW_LONE]
    return out


def raw_http(url: str, request: bytes) -> int:
    """Status code of one raw HTTP/1.1 request (for headers httpx would not send as given)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def malformed_request(rng: random.Random, features: list[str], max_items: int) -> tuple[str, bytes | str, str]:
    """(path, body, content type) of one request that must be refused with a 4xx."""
    f = rng.choice(features)
    junk = rng.choice([1.5, True, [1, 2], {"a": 1}, {"nested": [None, {}]}, "x" * 2000, -(2**70) * 1.0])
    cases = [
        ("/v1/embeddings", {"items": [{"feature": "nope", "value": "v"}]}),
        ("/v1/embeddings", {"items": [{"feature": f, "value": junk}]}),
        ("/v1/embeddings", {"items": [{"feature": junk, "value": "v"}]}),
        ("/v1/embeddings", {"items": [{"feature": f}]}),
        ("/v1/embeddings", {"items": [{"feature": f, "value": "v", "extra": 1}]}),
        ("/v1/embeddings", {"items": [{"feature": f, "value": "v"}] * (max_items + rng.randint(1, 50))}),
        ("/v1/embeddings", {"items": [], "entities": []}),
        ("/v1/embeddings", {"entities": [{f: ["a", "b"]}]}),
        ("/v1/embeddings", {"entities": [{"unknown": "a"}]}),
        ("/v1/embeddings", {"entities": junk}),
        ("/v1/score", {"requests": []}),
        ("/v1/score", {"requests": [{"dense": {"I1": "3"}}]}),
        ("/v1/score", {"requests": [{"dense": {"nope": 1.0}}]}),
        ("/v1/score", {"requests": [{"sparse": {f: junk}}]}),
        ("/v1/score", {"requests": [{"sparse": {f: [f"{i}" for i in range(rng.randint(2, 300))]}}]}),
        ("/v1/score", {"requests": junk}),
        ("/v1/score", {"rows": [{}]}),
        (rng.choice(["/v1/score", "/v1/embeddings"]), junk),
    ]
    path, body = rng.choice(cases)
    raw = rng.random()
    if raw < 0.08:
        return "/v1/score", '{"requests": [{"dense": {"I1": %s}}]}' % rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]), "application/json"
    if raw < 0.14:
        return rng.choice(["/v1/score", "/v1/embeddings"]), rng.choice(["{", "", "null", "[1,", '{"items": [}', "\x00\xff"]), "application/json"
    if raw < 0.17:
        return "/v1/embeddings", b'{"items": [' + b'{"feature": "C1", "value": "v"},' * 12000 + b"]}", "application/json"
    if raw < 0.27:  # an ids.v1 body cut short, with bytes after it, a bad magic/version/flags byte, or an unknown feature
        body = bytearray(encode({f: np.arange(rng.randint(0, 9)), "C2": ["a", "", "bc"]}))
        how = rng.randrange(4)
        if how == 0:
            body = body[: rng.randrange(len(body))]
        elif how == 1:
            body += bytes(rng.randint(1, 9))
        elif how == 2:
            body[rng.randrange(6)] ^= rng.randint(1, 255)
        else:
            body = bytearray(encode({"zz": ["a"]}))
        return "/v1/embeddings", bytes(body), IDS_V1
    return path, json.dumps(body), rng.choice(["application/json", "application/json", "text/plain"])
