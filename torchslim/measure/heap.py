"""Returning the C heap's free pages to the system, keeping large blocks out of it, and reading the peak memory.

A block's calibration and quantization allocate and free many mid-sized tensors (Hessian bands, GPTQ
temporaries). glibc serves those under its mmap threshold from the heap, and that threshold rises to
the largest block freed so far (up to 32 MiB), so most of them end up there; freed heap memory in the
middle of the heap stays resident, and the sequential run's memory between blocks creeps up from
block to block. ``malloc_trim(0)`` gives every free page of the heap back (glibc ≥ 2.8 releases whole
free pages anywhere in it, not only at the top).

FSDP training allocates and frees the same large tensors every step (each block's all-gathered
parameters and unsharded gradients): under the rising threshold they too come from the heap, which then
holds several steps' worth of them; :func:`cap_mmap_threshold` fixes the threshold so that each is
mapped and unmapped on its own (``mallopt(M_MMAP_THRESHOLD)``, which also ends the rising).

Hand-written: neither torch nor the standard library exposes ``malloc_trim`` or ``mallopt``; each is
one ctypes call.

:func:`peak_resident_bytes` is what each progress line of a sequential run reports: the process's
peak resident set so far (``VmHWM``; ``ru_maxrss`` where there is no ``/proc``).

Example:
    >>> release_free_heap() in (True, False)
    True
    >>> peak_resident_bytes() > 0
    True
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

from torchslim.core.libc import libc

__all__ = ["MMAP_THRESHOLD_ENV", "cap_mmap_threshold", "peak_resident_bytes", "release_free_heap", "resident_bytes"]

# glibc's own variable for the threshold: when the user sets it, their choice stands.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    lib = libc()
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None  # musl has none


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``).

    Returns whether memory was released; False where the C library has no ``malloc_trim``.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def cap_mmap_threshold(size: int = 4 << 20) -> bool:
    """Serve every allocation of ``size`` bytes or more by its own ``mmap`` for the rest of the process
    (glibc's ``mallopt(M_MMAP_THRESHOLD, size)``): freed, it leaves memory at once.

    Costs a page-fault pass over each such allocation. Returns whether the threshold was set; False
    without glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is set in the environment (the user's setting).
    """
    libc = _libc()
    if libc is None or os.environ.get(MMAP_THRESHOLD_ENV):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(size)))


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None without ``/proc``)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def resident_bytes() -> int:
    """This process's resident set in bytes now (``VmRSS``; the peak where there is no ``/proc``)."""
    now = _status_bytes("VmRSS")
    return now if now is not None else peak_resident_bytes()


def peak_resident_bytes() -> int:
    """This process's peak resident set in bytes (``VmHWM`` of ``/proc/self/status``, else ``ru_maxrss``)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource  # POSIX only: imported here so that the module imports everywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024
