"""CPU tensors backed by transparent huge pages (2 MiB), for weights that a decode step streams whole.

A batch-1 decode step reads every weight once, so its speed is the rate at which a core streams memory.
With 4 KiB pages that stream pays a TLB miss every 4 KiB and the L2 hardware prefetcher stops at each
page boundary; with 2 MiB pages neither happens, and a core reads faster (the llama-decode rows of
BENCHMARKS.md run the W4A8 kernel on weights placed here). Linux gives an anonymous mapping huge pages when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always``, or ``madvise`` and the range was
``madvise(MADV_HUGEPAGE)``-d before its first touch (the common default); torch's CPU allocator does
neither by default (its ``THP_MEM_ALLOC_ENABLE`` variable is read once at start-up).

:func:`zeros` maps fresh anonymous memory, advises huge pages for the whole 2 MiB-aligned pages inside
it and returns a zero tensor there; only the pages the tensor covers become resident (the alignment
slack is never touched). Elsewhere (not Linux, ``never``, smaller than one huge page, or
``TORCHSLIM_HUGEPAGES=0``) it returns ``torch.zeros``. Either way the tensor is an ordinary CPU tensor.

Hand-written: torch exposes no per-tensor huge-page allocation; this is one ``mmap`` and one ``madvise``.

Example:
    >>> t = zeros((3, 4), torch.uint8)
    >>> t.shape, int(t.sum())
    (torch.Size([3, 4]), 0)
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
from collections.abc import Sequence

import torch

from torchslim.core.libc import libc

__all__ = ["ENV", "HUGE_PAGE", "available", "zeros"]

ENV = "TORCHSLIM_HUGEPAGES"
HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h


@functools.cache
def _madvise():  # noqa: ANN202 - a ctypes function or None
    lib = libc()
    if lib is None or not hasattr(lib, "madvise"):
        return None
    fn = lib.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@functools.cache
def _thp_enabled() -> bool:
    """Whether the kernel's THP setting is ``always`` or ``madvise`` (read once)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def available() -> bool:
    """Whether :func:`zeros` can ask for huge pages here (Linux, THP not ``never``, not turned off)."""
    return os.environ.get(ENV, "") != "0" and _madvise() is not None and _thp_enabled()


def zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor of ``shape`` and ``dtype``, in huge pages where :func:`available` (see the module
    docstring); ``torch.zeros(shape, dtype=dtype)`` otherwise."""
    nbytes = math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes < HUGE_PAGE or not available():
        return torch.zeros(tuple(shape), dtype=dtype)
    # Private: a shared anonymous mapping is shmem, whose huge pages follow another setting (usually never).
    area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # untouched zeros
    raw = torch.frombuffer(area, dtype=torch.uint8)  # holds the mapping for the tensor's lifetime
    start = (-raw.data_ptr()) % HUGE_PAGE
    whole = nbytes // HUGE_PAGE * HUGE_PAGE  # the tail under one huge page stays in small pages
    _madvise()(raw.data_ptr() + start, whole, _MADV_HUGEPAGE)  # a refusal only leaves small pages
    return raw[start : start + nbytes].view(dtype).view(tuple(shape))
