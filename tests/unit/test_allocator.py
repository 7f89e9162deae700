"""recsys.data.allocator: freed memory stays in glibc's heap inside ``held_memory`` and goes back after."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.data import allocator

SIZE = 96 << 20
glibc = allocator.glibc()
needs_glibc = pytest.mark.skipif(glibc is None or allocator.user_tuned() is not None, reason="needs glibc, untuned by the environment")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _in_a_fresh_process(check: str) -> None:
    """Run ``check`` (a function of this module) in a new interpreter: resident memory depends on
    what a process allocated before, so these measurements need one with no history."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = f"import tests.unit.test_allocator as t; t.{check}()"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def _touch_and_free(size: int) -> None:
    """malloc ``size`` bytes, write every page, free them."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    p = libc.malloc(size)
    assert p
    ctypes.memset(p, 1, size)
    libc.free(p)


@needs_glibc
def test_a_large_free_is_kept_inside_and_returned_after() -> None:
    _in_a_fresh_process("check_a_large_free_is_kept_inside_and_returned_after")


def check_a_large_free_is_kept_inside_and_returned_after() -> None:
    before = _rss()
    with allocator.held_memory() as settings:
        assert settings[allocator.M_MMAP_THRESHOLD] >= 32 << 20
        assert settings[allocator.M_TRIM_THRESHOLD] == allocator.HELD[allocator.M_TRIM_THRESHOLD]
        _touch_and_free(SIZE)
        held = _rss()
        assert held - before > SIZE * 0.9, "the freed block went back to the OS while held"
    assert held - _rss() > SIZE * 0.9, "the freed block was not handed back on leaving"
    before = _rss()
    _touch_and_free(SIZE)  # outside: a block this large is mmapped and unmapped again
    assert _rss() - before < SIZE * 0.1


@needs_glibc
def test_nested_entries_share_one_setting_and_the_last_restores() -> None:
    _in_a_fresh_process("check_nested_entries_share_one_setting_and_the_last_restores")


def check_nested_entries_share_one_setting_and_the_last_restores() -> None:
    with allocator.held_memory() as outer:
        with allocator.held_memory() as inner:
            assert inner == outer != {}
        before = _rss()
        _touch_and_free(SIZE)
        assert _rss() - before > SIZE * 0.9, "the inner exit restored the settings early"
    with allocator.held_memory() as again:
        assert again == outer


def test_other_c_libraries_and_user_tuning_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    with allocator.held_memory() as settings:
        assert settings == {}
    monkeypatch.undo()
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1048576")
    assert allocator.user_tuned() == "MALLOC_TOP_PAD_"
    with allocator.held_memory() as settings:
        assert settings == {}
    assert allocator.user_tuned({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) is None
    assert allocator.user_tuned({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "GLIBC_TUNABLES"


@needs_glibc
def test_trim_hands_back_the_free_memory_while_still_held() -> None:
    _in_a_fresh_process("check_trim_hands_back_the_free_memory_while_still_held")


def check_trim_hands_back_the_free_memory_while_still_held() -> None:
    with allocator.held_memory():
        before = _rss()
        _touch_and_free(SIZE)
        assert _rss() - before > SIZE * 0.9
        allocator.trim()
        assert _rss() - before < SIZE * 0.1
        before = _rss()
        _touch_and_free(SIZE)  # still held after the trim
        assert _rss() - before > SIZE * 0.9
