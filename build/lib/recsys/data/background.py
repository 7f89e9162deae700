"""A single worker thread for I/O-heavy calls (Arrow and Parquet writers release the GIL)."""

from __future__ import annotations

import queue
import threading
from types import TracebackType
from typing import Any, Callable

_STOP = object()


class Background:
    """Runs submitted calls in submission order on one thread; at most ``max_pending`` wait.

    An exception in a call is re-raised by the next ``submit`` or by ``close``; later calls
    are then dropped.
    """

    def __init__(self, max_pending: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the submitting thread
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        self._queue.put((fn, args))

    def close(self) -> None:
        """Wait for every submitted call; re-raise the first error."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        self._error = self._error or exc
        self._queue.put(_STOP)
        self._thread.join()
