"""Read batches ahead of the consumer on a background thread.

``Prefetched(reader, transform)`` yields exactly the wrapped reader's batches, in its order,
each passed through ``transform`` (e.g. an embedding method's ``prepare``: hashing), while the
consumer works on the previous ones. Parquet decoding, Arrow → tensor conversion and torch ops
release the GIL, so on a machine with a spare core the step no longer waits for them.

An exception in the thread is raised by the consumer in place of the batch it broke; a
consumer that stops early (``break``, an error) stops the thread before its loop exits.

Example:
    >>> for batch in Prefetched(reader, lambda b: b):  # doctest: +SKIP
    ...     step(batch)
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, Iterator, Protocol, TypeVar

T = TypeVar("T")
_END = object()


class _Reader(Protocol[T]):
    def __iter__(self) -> Iterator[T]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


class Prefetched(Generic[T]):
    """``reader``'s items, ``transform``ed, read up to ``depth`` ahead on one thread.

    ``len`` and ``set_epoch`` are the wrapped reader's.
    """

    def __init__(self, reader: _Reader[T], transform: Callable[[T], T] | None = None, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.reader = reader
        self.transform = transform
        self.depth = depth

    def __len__(self) -> int:
        return len(self.reader)

    def set_epoch(self, epoch: int) -> None:
        self.reader.set_epoch(epoch)

    def __iter__(self) -> Iterator[T]:
        slots: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any, error: BaseException | None = None) -> bool:
            while not stop.is_set():
                try:
                    slots.put((item, error), timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self.reader:
                    if not put(self.transform(item) if self.transform is not None else item):
                        return
                put(_END)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(None, exc)

        thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item, error = slots.get()
                if error is not None:
                    raise error
                if item is _END:
                    return
                yield item
        finally:
            stop.set()
            thread.join()
