"""Request bodies and raw requests for the HTTP fuzz tests: lone surrogates, escaped and raw."""

from __future__ import annotations

import socket

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
