"""Request limits of the lookup service, the same on every HTTP front (an ASGI layer).

* Bodies over ``max_body_bytes`` (declared or streamed) get 413 before any parsing.
* A body must arrive whole within ``body_timeout_s`` of the request's headers, else 408 and the
  connection is closed (a slow or stalled client cannot hold a request open).
* At most ``max_inflight`` POST requests are served at once by one process; more get 503 with
  ``Retry-After: 1`` at once instead of queueing without bound.

Header timeouts, idle keep-alive connections and the connection limit belong to the front
(``recsys.serving.fronts``): they act before a request reaches the app.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


class RequestLimits:
    """Body size and read-time limits and the in-flight request limit of POST requests."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float, max_inflight: int) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.timeout = body_timeout_s
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            await reject(send, 503, f"more than {self.max_inflight} requests in flight; retry", ((b"retry-after", b"1"),))
            return
        self.inflight += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        declared = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                declared = value
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await reject(send, 413 if declared.isdigit() else 400, "request body too large" if declared.isdigit() else "bad Content-Length")
            return
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.timeout):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
                    if size > self.limit:
                        await reject(send, 413, "request body too large")
                        return
        except TimeoutError:
            await reject(send, 408, f"request body not received within {self.timeout:g} s")
            return
        await self.app(scope, replay_receive(chunks[0] if len(chunks) == 1 else b"".join(chunks), receive), send)


def replay_receive(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive`` that gives an already read ``body`` once, then defers to ``receive``."""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def error_body(detail: str) -> bytes:
    """The JSON ``{"detail": ...}`` body of the limits' error answers (on every front)."""
    return ('{"detail":"%s"}' % detail).encode()


async def reject(send: Any, status: int, detail: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A JSON ``{"detail": ...}`` error answer that closes the connection."""
    body = error_body(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
