"""Symmetric matrices stored as their upper triangle: half the memory of a layer's ``K × K`` Hessian.

``X Xᵀ`` is symmetric, so a calibration pass needs only the ``K (K + 1) / 2`` entries on and above the
diagonal. :class:`SymmetricPacked` keeps them row by row (row ``i`` holds columns ``i … K-1``, the
"UPLO = L, row-major" packed layout of LAPACK's ``?spmv``), and hands out the whole matrix, or a
symmetric permutation of it in another dtype, one band of rows at a time (no second full-size
temporary). At ``K = 8704`` (a 3 B LLaMA's MLP down projection) a float64 Hessian takes 303 MB packed
instead of 606 MB.

Hand-written: torch has no packed symmetric storage; the index arithmetic below is the whole of it.

Example:
    >>> import torch
    >>> full = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]], dtype=torch.float64)
    >>> p = SymmetricPacked.from_full(full)
    >>> p.data.tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    >>> p.diagonal().tolist(), torch.equal(p.full(), full)
    ([1.0, 4.0, 6.0], True)
    >>> p.permuted(torch.tensor([2, 0, 1]), torch.float32).tolist()[0]
    [6.0, 3.0, 5.0]
"""

from __future__ import annotations

import torch

__all__ = ["SymmetricPacked", "packed_size", "row_offsets"]

_BAND = 1 << 18  # elements of the full matrix built per band of rows (its index temporaries: 2 MiB each)


def packed_size(k: int) -> int:
    """Entries of a ``k × k`` symmetric matrix's upper triangle: ``k (k + 1) / 2``."""
    return k * (k + 1) // 2


def row_offsets(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Where row ``i`` (its diagonal entry) starts in the packed layout: ``i·k − i(i−1)/2``."""
    rows = rows.to(torch.int64)
    return rows * k - rows * (rows - 1) // 2


class SymmetricPacked:
    """A symmetric ``k × k`` matrix as its packed upper triangle ``data`` (1-D, ``packed_size(k)``)."""

    def __init__(self, data: torch.Tensor, k: int) -> None:
        if data.dim() != 1 or data.numel() != packed_size(k):
            raise ValueError(f"packed data of {tuple(data.shape)} is no upper triangle of a {k} x {k} matrix")
        self.data: torch.Tensor | None = data
        self.k = k

    @classmethod
    def from_full(cls, m: torch.Tensor) -> SymmetricPacked:
        """The upper triangle of the square matrix ``m`` (its lower triangle is not read)."""
        k = m.shape[0]
        mask = torch.ones(k, k, dtype=torch.bool, device=m.device).triu_()
        return cls(m.masked_select(mask), k)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.k)

    @property
    def dtype(self) -> torch.dtype:
        return self._data().dtype

    def _data(self) -> torch.Tensor:
        if self.data is None:
            raise ValueError("the packed matrix was released")
        return self.data

    def diagonal(self) -> torch.Tensor:
        """The diagonal (a copy), in the stored dtype."""
        data = self._data()
        return data[row_offsets(torch.arange(self.k, device=data.device), self.k)]

    def permuted(self, perm: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``M[perm][:, perm]`` as a full matrix in ``dtype`` (default: the stored one), a band of rows at a time.

        Each entry is the stored one converted once: the same bits as permuting the full matrix and
        then converting it.
        """
        data = self._data()
        k = self.k
        perm = perm.to(torch.int64)
        out = torch.empty(k, k, dtype=dtype or data.dtype, device=data.device)
        rows = max(1, _BAND // max(1, k))
        cols = perm.unsqueeze(0)
        for start in range(0, k, rows):
            band = perm[start : start + rows].unsqueeze(1)
            lo, hi = torch.minimum(band, cols), torch.maximum(band, cols)
            out[start : start + rows] = data.take(row_offsets(lo, k) + (hi - lo))
        return out

    def full(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole matrix (both triangles) in ``dtype`` (default: the stored one)."""
        return self.permuted(torch.arange(self.k, device=self._data().device), dtype)

    def release(self) -> None:
        """Drop the stored entries (their memory is freed once no one else holds them)."""
        self.data = None
