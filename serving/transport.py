"""uvicorn's HTTP protocol with coalesced writes: one ``send()`` per response instead of two.

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
