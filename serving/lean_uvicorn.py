"""The one-thread lean front (``recsys serve --server uvicorn-lean``): uvicorn's HTTP protocol
(httptools' C parser on uvloop's C event loop) answering ids.v1 lookups inside the protocol.

A ``POST /v1/embeddings`` with ``Content-Type: application/vnd.recsys.ids.v1``, a Content-Length
under ``Service.offload_bytes`` and the right token (or none configured) is answered in the
parser's callbacks: the body is gathered as it arrives, then ``Service.ids_now`` (the same
decode, lookup and float32 rows as every front) and one write of the whole answer. No ASGI
task, scope, messages or middleware calls, and no hand-off between threads: on granian every
request crosses from its Rust threads to the Python one and back, which cost about half of the
server's CPU at 512 ids (``docs/results/serving_http.md``). The same limits as the ASGI path
apply: 503 beyond ``max_inflight`` requests in flight (counted with the app's), the body must
arrive within ``body_timeout_s`` (else 408 and close, as ``recsys.serving.limits`` answers), and
the same Prometheus series count it. Every other request (JSON bodies, a missing or wrong token,
chunked or large bodies, ``Expect: 100-continue``, a request pipelined behind an unfinished one,
``/metrics``, ``/readyz``) goes to the whole ASGI app as on plain ``uvicorn``; graceful shutdown
lets a lookup whose body is still arriving finish, then closes.

The service is a class attribute, set in each process before it serves (uvicorn makes the
protocol per connection from the class).
"""

from __future__ import annotations

import hmac
import logging
import time
from http import HTTPStatus
from typing import Any

from recsys.serving.app import Service
from recsys.serving.idsv1 import CONTENT_TYPE as IDS_V1
from recsys.serving.limits import error_body
from recsys.serving.transport import HeaderTimeoutProtocol

try:
    from recsys.serving import httpfast
except ImportError as exc:  # a source checkout never built: every lookup takes the parser's callbacks
    httpfast = None
    _MISSING = str(exc)

log = logging.getLogger("recsys.serving.lean_uvicorn")
_PATH = b"/v1/embeddings"
_LABEL = "/v1/embeddings"
_IDS_V1 = IDS_V1.encode()
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def check_built() -> bool:
    """Whether the compiled recogniser is there; logs a warning when not (lookups then take the parser's callbacks)."""
    if httpfast is None:
        log.warning("recsys.serving.httpfast is not built (%s): ids.v1 lookups go through the HTTP parser; `make install` builds it", _MISSING)
    return httpfast is not None


def answer_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool) -> bytes:
    """One HTTP/1.1 response: status line, ``headers``, Content-Length (and ``connection: close``)."""
    lines = [_STATUS[status]]
    lines.extend(b"%s: %s\r\n" % pair for pair in headers)
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"content-length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


class LeanHttpProtocol(HeaderTimeoutProtocol):
    """uvicorn's protocol with ids.v1 lookups answered in place (see the module docstring)."""

    service: Service | None = None
    head: tuple[Any, tuple[str, str, str], bytes] | None = None  # (uvicorn's default headers, key, the answer's head)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.lean_body: bytearray | None = None  # the body of the ids.v1 request being answered here
        self.lean_keep = True
        self.lean_accept = b""
        self.lean_start = 0.0
        self.lean_timer: Any = None
        self.in_message = False  # the parser holds part of a request
        self.idle_since = 0.0
        self.quick_timer: Any = None  # the keep-alive timer idle_check runs (uvicorn's own may replace it)
        service = self.service
        self.quick = service is not None and httpfast is not None
        self.quick_max = 0 if service is None else min(service.offload_bytes - 1, service.limits.limit)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_message = True
        if self.timeout_keep_alive_task is not None:  # armed by a lookup answered in this same read
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def on_headers_complete(self) -> None:
        if self.lean_request():
            self.headers_arrived()
            return
        super().on_headers_complete()

    def lean_request(self) -> bool:
        """Whether this request is answered here; if so its state is set up."""
        service = self.service
        if service is None or self.parser.get_method() != b"POST" or self.url != _PATH or self.expect_100_continue:
            return False
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline or self.parser.should_upgrade():
            return False
        if self.over_limits(service):
            return False  # uvicorn's or the limits' 503 on the parser's path
        ctype = length = auth = accept = None
        for name, value in self.headers:
            if name == b"content-type":
                ctype = ctype or value
            elif name == b"content-length":
                length = value if length is None else b"x"  # a repeated length: uvicorn's path decides
            elif name == b"authorization":
                auth = auth or value
            elif name == b"accept":
                accept = accept or value
            elif name == b"transfer-encoding":
                return False
        if ctype is None or ctype.split(b";")[0].strip().lower() != _IDS_V1:
            return False
        if length is None or not length.isdigit() or int(length) >= service.offload_bytes or int(length) > service.limits.limit:
            return False
        expected = service.expected_auth
        if expected is not None and not hmac.compare_digest(auth or b"", expected):
            return False  # 401 from the routes
        self.lean_body = bytearray()
        self.lean_keep = self.parser.should_keep_alive() and self.parser.get_http_version() == "1.1"
        self.lean_accept = accept or b""
        self.lean_start = time.perf_counter()
        service.limits.inflight += 1  # in flight from its headers to its answer, as on the other fronts
        service.asgi.metrics.active += 1
        return True

    def over_limits(self, service: Service) -> bool:
        """Whether uvicorn's connection limit or the app's in-flight limit is reached (a 503 either way)."""
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return True
        return service.limits.inflight >= service.limits.max_inflight

    def lean_end(self, status: int) -> None:
        """The lookup is over (answered, timed out or abandoned): out of flight, counted."""
        service = self.service
        assert service is not None
        self.lean_body = None
        if self.lean_timer is not None:
            self.lean_timer.cancel()
            self.lean_timer = None
        service.limits.inflight -= 1
        service.asgi.metrics.active -= 1
        service.asgi.observe(_LABEL, status, time.perf_counter() - self.lean_start)

    def on_body(self, body: bytes) -> None:
        if self.lean_body is None:
            super().on_body(body)
        else:
            self.lean_body += body

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.lean_body is None:
            super().on_message_complete()
            return
        self.finish(self.answer(bytes(self.lean_body), self.lean_accept), self.lean_keep)

    def answer(self, raw: bytes, accept: bytes) -> tuple[int, bytes]:
        """The status and HTTP bytes answering the ids.v1 body ``raw`` (``lean_keep``: keep the connection)."""
        service = self.service
        assert service is not None
        try:
            status, body, media_type, extra = service.ids_now(raw, accept)
        except Exception:
            log.exception("ids.v1 lookup failed")
            status, body, media_type, extra, self.lean_keep = 500, b'{"detail":"Internal Server Error"}', "application/json", {}, False
        defaults = self.server_state.default_headers
        if status == 200 and self.lean_keep and len(extra) == 3:  # the rows: one cached head per second and version
            head = LeanHttpProtocol.head
            key = (media_type, extra["X-Model-Version"], extra["X-Embedding-Dim"])
            if head is None or head[0] is not defaults or head[1] != key:
                lines = [
                    *defaults,
                    (b"content-type", media_type.encode()),
                    (b"x-model-version", key[1].encode()),
                    (b"x-embedding-dim", key[2].encode()),
                ]
                LeanHttpProtocol.head = head = (defaults, key, _STATUS[200] + b"".join(b"%s: %s\r\n" % pair for pair in lines))
            count = extra["X-Embedding-Count"].encode()
            return 200, b"%sx-embedding-count: %s\r\ncontent-length: %d\r\n\r\n%s" % (head[2], count, len(body), body)
        headers = [*defaults, (b"content-type", media_type.encode())]
        headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
        return status, answer_bytes(status, headers, body, self.lean_keep)

    def finish(self, answer: tuple[int, bytes], keep: bool) -> None:
        """Send one answer, then keep the connection for the next request or close it."""
        self.transport.write_now(answer[1])
        self.lean_end(answer[0])
        if keep:
            self.on_response_complete()  # uvicorn's: counts the request, arms the keep-alive timer
        else:
            self.transport.close()

    def quick_answers(self, data: bytes) -> bytes:
        """Answer the whole ids.v1 lookups at the start of ``data`` without the parser (``httpfast.match``);
        the bytes left (from the first request it declines) go to the parser. Each is answered before
        this returns (nothing else runs meanwhile), so the in-flight counts need no update."""
        service = self.service
        assert service is not None
        observe = service.asgi.observe
        while data:
            found = httpfast.match(data, service.expected_auth, self.quick_max)
            if found is None or self.over_limits(service):
                return data  # the parser's path answers it (or 503s it)
            end, start, keep, accept = found
            started = time.perf_counter()
            self.headers_arrived()
            self.lean_keep = keep
            status, out = self.answer(data[start:end], accept)
            self.transport.write_now(out)
            observe(_LABEL, status, time.perf_counter() - started)
            self.server_state.total_requests += 1
            if not self.lean_keep or self.transport.is_closing():
                self.transport.close()
                return b""
            self.idle_since = self.loop.time()
            task = self.timeout_keep_alive_task
            if task is None or task is not self.quick_timer:  # one timer per idle spell, not one per request
                if task is not None:  # uvicorn's, armed after an answer of the parser's path
                    task.cancel()
                self.timeout_keep_alive_task = self.quick_timer = self.loop.call_later(self.timeout_keep_alive, self.idle_check)
            data = data[end:]
        return data

    def idle_check(self) -> None:
        """The keep-alive timer of quickly answered lookups: close once idle ``timeout_keep_alive`` s."""
        self.timeout_keep_alive_task = None
        left = self.idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.quick_timer = self.loop.call_later(left, self.idle_check)
        else:
            self.timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        if self.quick and self.lean_body is None and not self.in_message and (self.cycle is None or self.cycle.response_complete):
            if not self.pipeline:
                data = self.quick_answers(data)
                if not data:
                    return
        super().data_received(data)
        if self.lean_body is not None and self.lean_timer is None:  # a body still on its way: its deadline
            service = self.service
            assert service is not None
            self.lean_timer = self.loop.call_later(service.limits.timeout, self.body_late)

    def body_late(self) -> None:
        """The body did not arrive within the limit: 408 (as ``recsys.serving.limits``) and close."""
        self.lean_timer = None
        if self.lean_body is None or self.transport.is_closing():
            return
        self.lean_keep = False
        service = self.service
        assert service is not None
        body = error_body(f"request body not received within {service.limits.timeout:g} s")
        self.finish((408, answer_bytes(408, [(b"content-type", b"application/json")], body, False)), False)

    def shutdown(self) -> None:
        if self.lean_body is not None:  # a lookup whose body is arriving: answer it, then close
            self.lean_keep = False
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lean_body is not None:  # the client went away mid-body
            self.lean_end(499)
        super().connection_lost(exc)
