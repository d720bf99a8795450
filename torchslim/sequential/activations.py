"""Calibration activations between decoder blocks, in memory or in memory-mapped files.

Block-by-block compression keeps, per recipe step, every calibration batch's hidden states at the
current block boundary. :class:`ActivationStore` keeps them as ordinary tensors until they would pass
``limit_bytes`` in total; past that it writes each new tensor to a file in ``folder`` and hands back a
tensor mapped from that file (``torch.from_file``, a private mapping: the kernel pages it in on use and
may drop it again, so it does not stay resident).

Example:
    >>> import tempfile, torch
    >>> store = ActivationStore(limit_bytes=0, folder=tempfile.mkdtemp())
    >>> t = store.keep(torch.arange(6.0).reshape(2, 3))
    >>> t.tolist(), store.on_disk
    ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], 1)
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch

__all__ = ["ActivationStore"]


class ActivationStore:
    """Keeps tensors in memory up to ``limit_bytes`` (None: no limit), memory-mapped files beyond it."""

    def __init__(self, limit_bytes: int | None = None, folder: str | Path | None = None) -> None:
        self.limit_bytes = limit_bytes
        self._folder = Path(folder) if folder is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._count = itertools.count()
        self.in_memory = 0  # bytes
        self.on_disk = 0  # tensors
        self._mapped: set[int] = set()  # storage addresses of the file-mapped tensors

    def _dir(self) -> Path:
        if self._folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="torchslim-activations-")
            self._folder = Path(self._tmp.name)
        return self._folder

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` itself, or (over the limit) an equal tensor mapped from a file."""
        t = t.detach()
        size = t.numel() * t.element_size()
        if self.limit_bytes is None or self.in_memory + size <= self.limit_bytes:
            self.in_memory += size
            return t
        path = self._dir() / f"act-{next(self._count)}.bin"
        t.contiguous().reshape(-1).view(torch.uint8).numpy().tofile(path)
        self.on_disk += 1
        mapped = torch.from_file(str(path), shared=False, size=t.numel(), dtype=t.dtype).reshape(t.shape)
        self._mapped.add(mapped.untyped_storage().data_ptr())
        return mapped

    def forget(self, t: torch.Tensor) -> None:
        """Count ``t`` (kept earlier in memory) as freed."""
        if t.untyped_storage().data_ptr() not in self._mapped:
            self.in_memory = max(0, self.in_memory - t.numel() * t.element_size())

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
