"""A conversion's memory: Arrow on jemalloc (``jemalloc_pool``), glibc's malloc held open around it
and handed back after it (``held_memory``).

A conversion allocates and frees large numpy temporaries chunk after chunk. With glibc's
defaults each of them is mmapped (or trimmed off the heap top) and unmapped when freed, and
the next chunk faults the same amount of memory in again: about a third of the conversion's
CPU time went to the kernel. ``held_memory`` raises ``M_MMAP_THRESHOLD`` (1 GiB), ``M_TRIM_THRESHOLD``
(2 GiB) and ``M_TOP_PAD`` (256 MiB) through ``mallopt`` so that freed memory stays in the heap
and is reused. On leaving it sets fixed thresholds where glibc's dynamic threshold ends after
large frees (mmap 32 MiB, trim 64 MiB; glibc can neither report its parameters nor turn the
dynamic threshold back on once they are set) and calls ``malloc_trim(0)``, so a long-lived
process (a notebook, ``recsys quickstart``) gets the memory back.

Arrow's jemalloc (the converter's Arrow pool) keeps freed pages for 10 s instead of Arrow's 1 s
(``pa.jemalloc_set_decay_ms``; it reaches the arenas jemalloc creates from then on, so arenas
made during a conversion keep the 10 s after it, and their background thread still returns the
pages then), unless ``JE_ARROW_MALLOC_CONF`` is set.

Nothing is changed in glibc where the C library is not glibc (musl, macOS: one debug log), or where the
user's environment already tunes malloc (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``).
Nested or concurrent conversions share one setting: the last to leave restores.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

HELD = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 256 << 20}
RELEASED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_TOP_PAD: 128 << 10}
FALLBACK_MMAP_THRESHOLD = 32 << 20  # the most older glibc versions accept through mallopt
JEMALLOC_DECAY_MS, ARROW_DECAY_MS = 10_000, 1_000  # held, and Arrow's default (dirty_decay_ms:1000)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")

_log = logging.getLogger(__name__)
_lock = threading.Lock()


@dataclass
class _State:
    depth: int = 0
    applied: dict[int, int] | None = None  # what the outermost entry set (None: nothing)
    libc: ctypes.CDLL | None = None
    checked: bool = False


_state = _State()


def glibc() -> ctypes.CDLL | None:
    """The process's glibc (with ``mallopt`` and ``malloc_trim``), or None for another C library."""
    if not _state.checked:
        _state.checked = True
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version.restype = ctypes.c_char_p
            version = libc.gnu_get_libc_version().decode()
            libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError) as exc:
            _log.debug("malloc left as it is: the C library is not glibc (%s)", exc)
            return None
        _log.debug("glibc %s: malloc held open during conversions", version)
        _state.libc = libc
    return _state.libc


def user_tuned(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """The environment variable by which the user already tunes malloc, if any."""
    for name in USER_SETTINGS:
        value = environ.get(name)
        if value is not None and (name != "GLIBC_TUNABLES" or "glibc.malloc." in value):
            return name
    return None


def _apply(libc: ctypes.CDLL, settings: dict[int, int]) -> dict[int, int]:
    applied = {}
    for param, value in settings.items():
        if libc.mallopt(param, value) != 1 and param == M_MMAP_THRESHOLD:
            value = FALLBACK_MMAP_THRESHOLD if libc.mallopt(param, FALLBACK_MMAP_THRESHOLD) == 1 else 0
        if value:
            applied[param] = value
    return applied


def _jemalloc_decay(ms: int) -> None:
    if os.environ.get("JE_ARROW_MALLOC_CONF") is None:
        with contextlib.suppress(NotImplementedError, pa.ArrowException):  # a pyarrow built without jemalloc
            pa.jemalloc_set_decay_ms(ms)


def trim() -> None:
    """Hand the free memory of every glibc arena back to the OS now (between a conversion's stages:
    the next stage's threads may not get the arenas the last one freed into)."""
    if _state.applied is not None and _state.libc is not None:
        _state.libc.malloc_trim(0)


@contextlib.contextmanager
def jemalloc_pool() -> Iterator[None]:
    """Arrow allocates from jemalloc while converting (about 10% faster than mimalloc on this
    allocation churn), unless ``ARROW_DEFAULT_MEMORY_POOL`` chooses; the old default is restored."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@contextlib.contextmanager
def held_memory() -> Iterator[dict[int, int]]:
    """Keep freed memory in glibc's heap while inside; hand it back to the OS after.

    Yields the ``mallopt`` settings in force ({} when nothing was changed)."""
    with _lock:
        _state.depth += 1
        if _state.depth == 1:
            libc = glibc()
            tuned = user_tuned()
            if libc is None or tuned is not None:
                if tuned is not None:
                    _log.debug("malloc left as it is: the environment tunes it (%s)", tuned)
                _state.applied = None
            else:
                _state.applied = _apply(libc, HELD)
            _jemalloc_decay(JEMALLOC_DECAY_MS)
        applied = dict(_state.applied or {})
    try:
        yield applied
    finally:
        with _lock:
            _state.depth -= 1
            if _state.depth == 0 and _state.applied is not None and _state.libc is not None:
                _apply(_state.libc, RELEASED)
                _state.libc.malloc_trim(0)
                _state.applied = None
            if _state.depth == 0:
                _jemalloc_decay(ARROW_DECAY_MS)
