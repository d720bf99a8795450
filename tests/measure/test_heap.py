"""release_free_heap gives freed heap pages in the middle of the C heap back to the system (glibc)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from torchslim.measure.heap import MMAP_THRESHOLD_ENV, _libc, cap_mmap_threshold, release_free_heap


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("VmRSS")


@pytest.mark.skipif(_libc() is None or not Path("/proc/self/status").exists(), reason="glibc's malloc_trim (Linux)")
def test_freed_heap_pages_below_a_live_block_are_returned() -> None:
    libc = _libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 1024  # 64 MiB in blocks under the mmap threshold: served from the heap
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # touched: resident
    pin = libc.malloc(size)  # a live block above them: the heap's top cannot shrink past it
    for b in blocks:
        libc.free(b)
    before = _rss()
    assert release_free_heap()
    after = _rss()
    libc.free(pin)
    assert before - after > 32 * 1024 * 1024, (before - after) / 2**20


@pytest.mark.skipif(_libc() is None, reason="glibc's mallopt")
def test_cap_mmap_threshold_defers_to_the_users_setting(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(_libc(), "mallopt", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setenv(MMAP_THRESHOLD_ENV, "65536")
    assert not cap_mmap_threshold() and calls == []
    monkeypatch.delenv(MMAP_THRESHOLD_ENV)
    assert cap_mmap_threshold(1 << 20) and calls == [(-3, 1 << 20)]
