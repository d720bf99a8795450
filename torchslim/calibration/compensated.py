"""Compensated (double-double) summation: running sums whose result does not depend on the order.

A float64 sum of many terms depends on the order they are added in, in its last bits; a calibration
split over processes adds the same per-batch terms in another order than one process does. Carrying
the sum as an unevaluated pair ``hi + lo`` with Knuth's error-free TwoSum (Knuth, TAOCP vol. 2,
§4.2.2; the cascaded ``Sum2`` of Ogita, Rump & Oishi, 2005, "Accurate Sum and Dot Product") keeps
the rounding error of every addition in ``lo``; the pair then holds the exact sum to about
``n · 2⁻¹⁰⁶`` relative to the sum of magnitudes, and :meth:`CompensatedSum.value` rounds it to the
nearest float64. Two orders give the same float64 unless the exact sum lies within that margin of
a rounding midpoint between two float64 values (the only way the results can differ).

Hand-written: the few element-wise lines below are the whole algorithm, and torch has no exact or
order-independent tensor summation.

Example:
    >>> import torch
    >>> terms = [torch.tensor([v], dtype=torch.float64) for v in (1e16, 1.0, -1e16)]
    >>> float(sum(terms))  # plain float64: the 1.0 is lost
    0.0
    >>> acc = CompensatedSum()
    >>> for t in terms:
    ...     acc.add(t)
    >>> float(acc.value())
    1.0
"""

from __future__ import annotations

import torch

__all__ = ["CompensatedSum", "two_sum"]

_CHUNK = 1 << 18  # elements per TwoSum step (2 MiB of float64 per temporary)


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (element-wise, Knuth's TwoSum).

    Example:
        >>> s, e = two_sum(torch.tensor([1e16], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
        >>> float(s), float(e)
        (1e+16, 1.0)
    """
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


class CompensatedSum:
    """A float64 running sum kept as ``hi + lo``; :meth:`add` terms, :meth:`merge` other sums, read :meth:`value`."""

    def __init__(self, hi: torch.Tensor | None = None, lo: torch.Tensor | None = None) -> None:
        self.hi = hi.contiguous() if hi is not None else None
        self.lo = lo.contiguous() if lo is not None else (torch.zeros_like(self.hi) if hi is not None else None)

    def add(self, x: torch.Tensor) -> None:
        """Add a term of the sum's shape (converted to float64)."""
        x = x.to(torch.float64)
        if self.hi is None:
            self.hi, self.lo = x.clone(), torch.zeros_like(x)
            return
        self._add_pair(x, None)

    def add_rows(self, start: int, x: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Add ``x`` to rows ``start : start + len(x)`` of a sum of ``shape`` (zeros where nothing was added).

        Adding a ``K × K`` term a band of rows at a time keeps the term's temporary to one band; the
        sum equals adding the whole term at once (TwoSum with a zero ``hi`` is exact).
        """
        if self.hi is None:
            self.hi = torch.zeros(shape, dtype=torch.float64, device=x.device)
            self.lo = torch.zeros_like(self.hi)
        rows = slice(start, start + x.shape[0])
        band = CompensatedSum(self.hi[rows], self.lo[rows])  # views: TwoSum writes through to this sum
        band._add_pair(x.to(torch.float64), None)

    def merge(self, other: CompensatedSum) -> None:
        """Add another compensated sum (its ``hi`` exactly, its ``lo`` as a correction)."""
        if other.hi is None:
            return
        if self.hi is None:
            self.hi, self.lo = other.hi.clone(), other.lo.clone()
            return
        self._add_pair(other.hi, other.lo)

    def _add_pair(self, hi: torch.Tensor, lo: torch.Tensor | None) -> None:
        """In place, a chunk at a time: TwoSum's temporaries stay small next to a Hessian-sized sum."""
        mine_hi, mine_lo = self.hi.view(-1), self.lo.view(-1)
        hi = hi.reshape(-1)
        lo = lo.reshape(-1) if lo is not None else None
        for start in range(0, mine_hi.numel(), _CHUNK):
            part = slice(start, start + _CHUNK)
            s, e = two_sum(mine_hi[part], hi[part])
            mine_hi[part] = s
            mine_lo[part] += e if lo is None else e + lo[part]

    def value(self) -> torch.Tensor:
        """The sum rounded to float64 (``hi + lo``).

        Raises:
            ValueError: nothing was added.
        """
        if self.hi is None:
            raise ValueError("empty sum")
        return self.hi + self.lo

    def take(self) -> torch.Tensor:
        """:meth:`value` computed in ``hi``'s memory; the sum is emptied (no third sum-sized tensor).

        Raises:
            ValueError: nothing was added.
        """
        if self.hi is None:
            raise ValueError("empty sum")
        out = self.hi.add_(self.lo)
        self.hi = self.lo = None
        return out
