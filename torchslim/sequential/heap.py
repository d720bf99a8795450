"""Returning the C heap's free pages to the system between decoder blocks.

A block's calibration and quantization allocate and free many mid-sized tensors (Hessian bands, GPTQ
temporaries). glibc serves those under its mmap threshold from the heap, and that threshold rises to
the largest block freed so far (up to 32 MiB), so most of them end up there; freed heap memory in the
middle of the heap stays resident, and the sequential run's memory between blocks creeps up from
block to block. ``malloc_trim(0)`` gives every free page of the heap back (glibc ≥ 2.8 releases whole
free pages anywhere in it, not only at the top).

Hand-written: neither torch nor the standard library exposes ``malloc_trim``; it is one ctypes call.

Example:
    >>> release_free_heap() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["release_free_heap"]


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
