"""The lean front (``recsys serve --server granian-rsgi``): granian's RSGI interface, ids.v1 lookups
answered without the ASGI stack, every other request handed to the ASGI app.

``POST /v1/embeddings`` with ``Content-Type: application/vnd.recsys.ids.v1`` and the right token (or
none configured) is answered here: the limits of ``recsys.serving.limits`` (the same in-flight
counter, body size and body time limits, the same 413/408/503 answers), the handler of
``recsys.serving.app`` (``Service.ids_answer``: decode, lookup, float32 rows) and the same
Prometheus series. Nothing else differs from the ASGI path but the per-request cost: no ASGI
messages, scope dict, middleware calls or header list conversions (RSGI hands the body and takes
the answer in one call each). Every other request, including an ids.v1 request with a missing or
wrong token (answered 401 by the routes), goes through ``Bridge`` to the whole ASGI app, so JSON
bodies, errors, ``/metrics``, ``/readyz`` and the docs are the routes' own.

RSGI has no lifespan events: ``__rsgi_init__`` starts the reload poller, ``__rsgi_del__`` (after
granian has let in-flight requests finish) stops it and logs ``stopped serving``.

The body time limit costs no timer per request: a request waiting for its body is noted with its
deadline, and one timer of the loop sweeps the notes every ``timeout / 4`` s (at most 0.25 s), cancelling
the reads past their deadline (answered 408, as on the ASGI path; the limit is met within that
sweep interval). ``asyncio.timeout`` scheduled and cancelled a timer handle per request (2.7-6 µs).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any
from urllib.parse import unquote

from recsys.serving.app import Service
from recsys.serving.idsv1 import CONTENT_TYPE as IDS_V1
from recsys.serving.limits import error_body

log = logging.getLogger("recsys.serving.rsgi")
_PATH = "/v1/embeddings"


def _address(text: str) -> tuple[str, int] | None:
    host, _, port = (text or "").rpartition(":")
    return (host, int(port)) if port.isdigit() else None


def _error(status: int, detail: str, extra: tuple[tuple[str, str], ...] = ()) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer ``recsys.serving.limits.reject`` gives on the ASGI path (closes the connection)."""
    body = error_body(detail)
    return status, [("content-type", "application/json"), ("connection", "close"), *extra], body


class Bridge:
    """Runs one RSGI request through an ASGI app: scope, body chunks as ``http.request`` messages,
    the answer collected and sent in one ``response_bytes``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, proto: Any) -> None:
        raw_path = scope.path
        asgi_scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": scope.http_version,
            "method": scope.method,
            "scheme": scope.scheme,
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("latin-1", "replace"),
            "query_string": scope.query_string.encode("latin-1", "replace"),
            "root_path": "",
            "headers": [(k.lower().encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in scope.headers.items()],
            "client": _address(scope.client),
            "server": _address(scope.server),
            "state": {},
        }
        chunks = proto.__aiter__()
        state = {"body_done": False, "status": 500, "headers": [], "parts": [], "sent": False}

        async def receive() -> dict[str, Any]:
            if not state["body_done"]:
                try:
                    chunk = await chunks.__anext__()
                    return {"type": "http.request", "body": bytes(chunk), "more_body": True}
                except StopAsyncIteration:
                    state["body_done"] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                except Exception:  # the client went away mid-body
                    state["body_done"] = True
                    return {"type": "http.disconnect"}
            await proto.client_disconnect()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["headers"] = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ()) if k.lower() != b"content-length"
                ]  # set by the server from the body
            elif message["type"] == "http.response.body" and not state["sent"]:
                state["parts"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    state["sent"] = True
                    proto.response_bytes(state["status"], state["headers"], b"".join(state["parts"]))

        await self.app(asgi_scope, receive, send)
        if not state["sent"]:  # the app ended without an answer (it saw the client go away)
            proto.response_empty(state["status"], state["headers"])


class LeanFront:
    """The RSGI app of one worker process (see the module docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.bridge = Bridge(service.asgi)
        self.metrics = service.asgi  # the MetricsMiddleware: same series as the ASGI path
        self.counts = service.asgi.metrics  # its in-flight count (``active``)
        self.limits = service.limits
        self.reading: dict[asyncio.Task, float] = {}  # requests waiting for their body -> deadline (time.monotonic)
        self.expired: set[asyncio.Task] = set()  # reads the sweep cancelled
        self.sweeper: asyncio.TimerHandle | None = None
        self.sweep_loop: Any = None
        self.period = max(0.01, min(0.25, self.limits.timeout / 4))

    def __rsgi_init__(self, loop: Any) -> None:
        self.service.holder.start()

    def __rsgi_del__(self, loop: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        self.service.holder.stop()
        log.info("stopped serving")

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        if scope.method == "POST" and scope.path == _PATH:
            headers = scope.headers
            ctype = headers.get("content-type") or ""
            if ctype.split(";")[0].strip().lower() == IDS_V1:
                auth = self.service.expected_auth
                if auth is None or hmac.compare_digest((headers.get("authorization") or "").encode("latin-1", "replace"), auth):
                    await self._ids(headers, proto)
                    return
        await self.bridge(scope, proto)

    async def _ids(self, headers: Any, proto: Any) -> None:
        start = time.perf_counter()
        self.counts.active += 1
        status = 500
        try:
            answer = await self._limited(headers, proto)
            if answer is None:  # the client went away mid-body
                status = 499
                return
            status, out_headers, body = answer
            proto.response_bytes(status, out_headers, body)
        finally:
            self.counts.active -= 1
            self.metrics.observe(_PATH, status, time.perf_counter() - start)

    def _sweep(self) -> None:
        """Cancel the body reads past their deadline (the only cancels ``expired`` notes), then re-arm."""
        now = time.monotonic()
        for task, deadline in list(self.reading.items()):
            if deadline <= now and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        if self.sweep_loop is not None and not self.sweep_loop.is_closed():
            self.sweeper = self.sweep_loop.call_later(self.period, self._sweep)

    @staticmethod
    async def _streamed(proto: Any, limit: int) -> bytes | None:
        """A body without Content-Length, read chunk by chunk; ``None`` once it passes ``limit`` bytes."""
        parts, size = [], 0
        async for chunk in proto:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
        return b"".join(parts)

    async def _limited(self, headers: Any, proto: Any) -> tuple[int, list[tuple[str, str]], bytes] | None:
        limits = self.limits
        if limits.inflight >= limits.max_inflight:
            return _error(503, f"more than {limits.max_inflight} requests in flight; retry", (("retry-after", "1"),))
        limits.inflight += 1
        try:
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limits.limit):
                return _error(413, "request body too large") if declared.isdigit() else _error(400, "bad Content-Length")
            task = asyncio.current_task()
            self.reading[task] = time.monotonic() + limits.timeout
            loop = asyncio.get_running_loop()
            if self.sweep_loop is not loop:  # the first request of this loop
                self.sweep_loop, self.sweeper = loop, loop.call_later(self.period, self._sweep)
            try:
                raw = await proto() if declared is not None else await self._streamed(proto, limits.limit)
            except asyncio.CancelledError:
                if task not in self.expired:  # cancelled by someone else (shutdown)
                    raise
                task.uncancel()
                return _error(408, f"request body not received within {limits.timeout:g} s")
            except RuntimeError:  # granian's RSGIProtocolClosed: the connection closed
                return None
            finally:
                del self.reading[task]
                self.expired.discard(task)
            if raw is None:
                return _error(413, "request body too large")
            status, body, media_type, extra = await self.service.ids_answer(raw, (headers.get("accept") or "").encode("latin-1", "replace"))
        finally:
            limits.inflight -= 1
        return status, [("content-type", media_type), *extra.items()], body
