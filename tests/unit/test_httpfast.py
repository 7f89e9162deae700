"""The lean front's request recogniser (serving/httpfast.c) against httptools, the parser it stands in
for: every request it accepts, httptools reads as the same single request (method, path, version,
headers, body, keep-alive) ending where it says; it declines what it must (other shapes, partial
bodies, a wrong token, smuggling-prone headers); and on thousands of mutated requests it never
accepts one that httptools reads differently or rejects."""

from __future__ import annotations

import random

import httptools
import pytest

httpfast = pytest.importorskip("recsys.serving.httpfast", reason="the C extension is not built (make install)")

IDS_V1 = b"application/vnd.recsys.ids.v1"
AUTH = b"Bearer s3cret"


def request(
    body: bytes = b"RIDS\x01\x00\x00\x00abc", headers: list[tuple[bytes, bytes]] | None = None, line: bytes = b"POST /v1/embeddings HTTP/1.1"
) -> bytes:
    if headers is None:
        headers = [(b"Host", b"x"), (b"Content-Type", IDS_V1), (b"Content-Length", str(len(body)).encode()), (b"Authorization", AUTH)]
    return line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body


class Parsed:
    """What httptools reads from ``data``: each complete message, or the error."""

    def __init__(self, data: bytes) -> None:
        self.messages: list[dict] = []
        self.error: str | None = None
        self.current: dict = {}
        parser = httptools.HttpRequestParser(self)
        self.parser = parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error = "upgrade"
        except httptools.HttpParserError as exc:
            self.error = str(exc)

    def on_message_begin(self) -> None:
        self.current = {"url": b"", "headers": [], "body": b""}

    def on_url(self, url: bytes) -> None:
        self.current["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current["headers"].append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.current["method"] = self.parser.get_method()
        self.current["version"] = self.parser.get_http_version()
        self.current["keep"] = self.parser.should_keep_alive()
        self.current["upgrade"] = self.parser.should_upgrade()

    def on_body(self, body: bytes) -> None:
        self.current["body"] += body

    def on_message_complete(self) -> None:
        self.messages.append(self.current)


def agrees(data: bytes, auth: bytes | None = AUTH, max_length: int = 1 << 20) -> tuple | None:
    """``match``'s answer, after checking it against httptools whenever it accepts."""
    found = httpfast.match(data, auth, max_length)
    if found is None:
        return None
    end, start, keep, accept = found
    p = Parsed(data[:end])
    assert p.error is None and len(p.messages) == 1, (data, p.error, p.messages)
    m = p.messages[0]
    assert (m["method"], m["url"], m["version"], m["upgrade"]) == (b"POST", b"/v1/embeddings", "1.1", False), m
    assert m["body"] == data[start:end] and m["keep"] == keep, (m, found)
    headers = dict(m["headers"])
    assert headers[b"content-type"].split(b";")[0].strip().lower() == IDS_V1
    assert int(headers[b"content-length"]) == end - start <= max_length
    assert auth is None or headers.get(b"authorization") == auth
    assert accept == headers.get(b"accept", b"")
    assert not {b"transfer-encoding", b"expect", b"upgrade"} & set(headers)
    return found


def test_a_plain_lookup_is_recognised_with_its_body_and_accept_header():
    body = bytes(range(40))
    data = request(
        body, [(b"content-type", IDS_V1 + b"; charset=x"), (b"Accept", b"application/json"), (b"content-length", b"40"), (b"authorization", AUTH)]
    )
    end, start, keep, accept = agrees(data)
    assert (data[start:end], end, keep, accept) == (body, len(data), True, b"application/json")
    assert agrees(data + request())[0] == len(data)  # a second request behind it: the first ends where it should
    assert agrees(request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b"Connection", b"close")]), auth=None)[2] is False
    assert agrees(request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b"Connection", b"Keep-Alive")]), auth=None)[2] is True


@pytest.mark.parametrize(
    "data",
    [
        request(line=b"GET /v1/embeddings HTTP/1.1"),
        request(line=b"POST /v1/embeddings?x=1 HTTP/1.1"),
        request(line=b"POST /v1/embeddings HTTP/1.0"),
        request(line=b"POST  /v1/embeddings HTTP/1.1"),
        request()[:-1],  # the body not all here yet
        request()[:30],  # nor the headers
        request(headers=[(b"Content-Type", b"application/json"), (b"Content-Length", b"11"), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11")]),  # no token
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b"Authorization", b"Bearer s3creT")]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b"Authorization", AUTH), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b"Content-Length", b"11"), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"11"), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b"Expect", b"100-continue"), (b"Authorization", AUTH)]),
        request(
            headers=[
                (b"Content-Type", IDS_V1),
                (b"Content-Length", b"11"),
                (b"Connection", b"upgrade"),
                (b"Upgrade", b"h2c"),
                (b"Authorization", AUTH),
            ]
        ),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"+11"), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"1 1"), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content Length", b"11"), (b"Authorization", AUTH)]),
        request(headers=[(b"Content-Type", IDS_V1), (b"Content-Length", b"11"), (b" folded", b"x"), (b"Authorization", AUTH)]),
        request().replace(b"\r\nAuthorization", b"\nAuthorization"),  # a bare LF
        request().replace(b"Host: x", b"Host: x\x00y"),
        request().replace(AUTH, AUTH + b"\t"),  # httptools keeps trailing white space: the token would not match there
    ],
)
def test_other_shapes_are_declined(data):
    assert agrees(data) is None


def test_the_length_limit_declines_larger_bodies():
    data = request(b"x" * 100)
    assert agrees(data, max_length=100) is not None and agrees(data, max_length=99) is None


def test_mutated_requests_are_never_read_differently_from_httptools():
    rng = random.Random(0)
    base = [
        request(),
        request(bytes(range(256)), [(b"content-type", IDS_V1), (b"accept", b"*/*"), (b"content-length", b"256"), (b"authorization", AUTH)]),
    ]
    alphabet = b"\r\n :;\t\x00\x7f\x80aA0-,"
    accepted = 0
    for _ in range(4000):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.choice(alphabet)
            elif op < 0.7:
                data.insert(i, rng.choice(alphabet))
            else:
                del data[i]
        accepted += agrees(bytes(data)) is not None
    assert 0 < accepted < 4000  # some mutations (in values, in the body) keep the shape, most do not
