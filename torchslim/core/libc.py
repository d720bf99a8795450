"""The C library through ctypes, for the few glibc calls torch does not expose (malloc_trim, mallopt, madvise).

Example:
    >>> lib = libc()
    >>> lib is None or hasattr(lib, "free")
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["libc"]


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The process's C library on Linux, loaded once; None elsewhere or when it cannot be found."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
