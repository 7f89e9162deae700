"""``Prefetched``: the wrapped reader's batches, in order, read on a background thread."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from recsys.data.prefetch import Prefetched


class Numbers:
    """A reader of ``0..n-1`` (times 10 after ``set_epoch(1)``) that can fail at one position."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.epoch, self.produced = n, fail_at, 0, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            if i == self.fail_at:
                raise ValueError(f"bad row group {i}")
            self.produced += 1
            yield i * (10 if self.epoch else 1)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batch-prefetch"]


def test_yields_the_readers_items_in_order_transformed_on_another_thread() -> None:
    reader, threads = Numbers(50), set()

    def square(x: int) -> int:
        threads.add(threading.get_ident())
        return x * x

    wrapped = Prefetched(reader, square, depth=3)
    assert len(wrapped) == 50
    assert list(wrapped) == [i * i for i in range(50)]
    assert threads and threading.get_ident() not in threads
    wrapped.set_epoch(1)
    assert reader.epoch == 1 and list(Prefetched(reader)) == [10 * i for i in range(50)]
    assert not prefetch_threads()


def test_an_error_in_the_reader_is_raised_where_it_happened() -> None:
    seen = []
    with pytest.raises(ValueError, match="bad row group 7"):
        for item in Prefetched(Numbers(20, fail_at=7)):
            seen.append(item)
    assert seen == list(range(7))
    assert not prefetch_threads()


def test_stopping_early_stops_the_thread_without_reading_everything() -> None:
    reader = Numbers(10_000)
    for item in Prefetched(reader, depth=2):
        if item == 3:
            break
    assert not prefetch_threads()
    assert reader.produced <= 3 + 1 + 2 + 1  # consumed, in hand, queued, one blocked in put
    time.sleep(0.1)
    assert reader.produced <= 7


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1, got 0"):
        Prefetched(Numbers(1), depth=0)
