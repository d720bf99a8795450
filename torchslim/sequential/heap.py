"""Returning the C heap's free pages to the system between decoder blocks, and reading the peak memory.

A block's calibration and quantization allocate and free many mid-sized tensors (Hessian bands, GPTQ
temporaries). glibc serves those under its mmap threshold from the heap, and that threshold rises to
the largest block freed so far (up to 32 MiB), so most of them end up there; freed heap memory in the
middle of the heap stays resident, and the sequential run's memory between blocks creeps up from
block to block. ``malloc_trim(0)`` gives every free page of the heap back (glibc ≥ 2.8 releases whole
free pages anywhere in it, not only at the top).

Hand-written: neither torch nor the standard library exposes ``malloc_trim``; it is one ctypes call.

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
import ctypes.util
import functools
import sys
from pathlib import Path

__all__ = ["peak_resident_bytes", "release_free_heap"]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # musl has none


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``).

    Returns whether memory was released; False where the C library has no ``malloc_trim``.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def peak_resident_bytes() -> int:
    """This process's peak resident set in bytes (``VmHWM`` of ``/proc/self/status``, else ``ru_maxrss``)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # POSIX only: imported here so that the module imports everywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024
