"""uvicorn's HTTP protocol with coalesced writes (one ``send()`` per response instead of two) and a header deadline.

uvicorn writes a response's status line and headers, then its body, as separate transport
writes, and asyncio sends each at once: two system calls, and on loopback two wake-ups of the
client, which parses the headers and sleeps again until the body comes. Here the writes made
during one event-loop step are joined and sent together at the end of the step (a
``call_soon``), which for a small response is a single segment. Nothing else changes: flow
control, closing and the other transport methods go to the real transport (a close first sends
what is pending).

The protocol class is uvicorn's choice for ``http="auto"``: httptools when installed, else h11.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
else:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base


class _CoalescingTransport:
    """Proxy of an asyncio transport whose writes within one loop step go out as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def write_now(self, data: bytes) -> None:
        """Send what is pending and ``data`` at once, in one ``send()`` when nothing is pending."""
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpProtocol(_Base):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol writing each loop step's output in one ``send()``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


_TIMEOUT_BODY = b'{"detail":"request headers not received in time"}'
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: "
    + str(len(_TIMEOUT_BODY)).encode()
    + b"\r\n\r\n"
    + _TIMEOUT_BODY
)


class HeaderTimeoutProtocol(CoalescingHttpProtocol):
    """The coalescing protocol with a header deadline: a connection's first request, and every later
    one from its first byte, must have sent all its headers within ``header_timeout_s``, else it
    gets 408 and is closed (a connection that sent nothing is just closed). uvicorn alone has no
    such timer: its keep-alive timer stops at the first byte, so a client sending a byte now and
    then held the connection forever. The deadline is a class attribute, set by ``recsys.serving.fronts``
    in each process before it serves (uvicorn's worker processes get the class by name). Needs
    httptools (the ``serve`` extra); with h11 the deadline is not enforced."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._partial = False
        self._header_timer: asyncio.TimerHandle | None = None
        if hasattr(_Base, "on_message_begin"):
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._partial = True
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self.headers_arrived()
        super().on_headers_complete()

    def headers_arrived(self) -> None:
        """A request's headers are all in: its header deadline no longer applies."""
        self._partial = False
        self._stop_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being answered: the body timeout (recsys.serving.limits) is in charge
        if self._partial:
            self.transport.write(_TIMEOUT_408)
        self.transport.close()
