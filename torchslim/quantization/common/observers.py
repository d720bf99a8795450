"""Observers: collect activation statistics during calibration and turn them into qparams.

An observer sees batches through :meth:`Observer.update` and answers :meth:`Observer.qparams`
``(scale, zero_point)`` (keepdim shapes, see :mod:`~torchslim.quantization.common.primitives`). Four kinds:

- :class:`MinMaxObserver`: the running min and max (exact range; sensitive to one outlier).
- :class:`MovingAverageObserver`: exponential moving average of each batch's min and max,
  ``r ← (1 − c) · r + c · r_batch`` (Jacob et al., 2018), which damps rare outliers.
- :class:`PercentileObserver`: clips at the ``p``-th percentile of the values seen.
- :class:`MSEObserver`: picks the clipping range ``α · [min, max]``, ``α ∈ (0, 1]`` on a grid, that
  minimises the mean squared quantization error ``E[(x − Q_α(x))²]`` over the values seen
  (as in Banner et al., 2019, "Post-training 4-bit quantization", solved numerically).

Percentile and MSE keep a bounded, seeded sample of values (``max_samples``), so memory stays flat
and two calibrations on the same data give the same result.

Bad data: an all-zero, constant or single-value calibration set gives finite scales (``EPS`` floor);
NaN or Inf raises ``ValueError`` at :meth:`update` (callers add the layer name); asking for qparams
before any data raises ``ValueError``.

Example:
    >>> import torch
    >>> obs = MinMaxObserver()
    >>> obs.update(torch.tensor([-1.0, 2.0])); obs.update(torch.tensor([3.0]))
    >>> obs.qparams(symmetric=False)[0]
    tensor([0.0157])
"""

from __future__ import annotations

import torch

from torchslim.quantization.common.primitives import (
    PER_TENSOR,
    Granularity,
    PerTensor,
    amin_amax,
    dequantize,
    qparams_from_minmax,
    quantize,
)

__all__ = [
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]


class Observer:
    """Base observer: running statistics over ``granularity`` (per-tensor by default).

    Args:
        granularity: ``PerTensor()`` or ``PerChannel(axis)`` (the axis is kept, e.g. 1 for NCHW channels).
    """

    def __init__(self, granularity: Granularity = PER_TENSOR) -> None:
        self.granularity = granularity
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of values (any shape)."""
        mn, mx = amin_amax(x, self.granularity)  # raises on NaN/Inf and on empty input
        self._merge(mn, mx)
        self.batches += 1

    def _merge(self, mn: torch.Tensor, mx: torch.Tensor) -> None:
        if self.min is None or self.max is None:
            self.min, self.max = mn, mx
        else:
            self.min, self.max = torch.minimum(self.min, mn), torch.maximum(self.max, mx)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(min, max)`` the qparams come from."""
        if self.min is None or self.max is None:
            raise ValueError("observer saw no calibration data")
        return self.min, self.max

    def qparams(self, *, bits: int = 8, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``: finite, scale ≥ EPS."""
        mn, mx = self.range()
        return qparams_from_minmax(mn, mx, bits=bits, symmetric=symmetric)


class MinMaxObserver(Observer):
    """The exact running range.

    Example:
        >>> obs = MinMaxObserver(); obs.update(torch.zeros(4))  # all zeros: still a finite scale
        >>> float(obs.qparams()[0]) > 0
        True
    """


class MovingAverageObserver(Observer):
    """Exponential moving average of the per-batch range (the first batch initialises it).

    Args:
        momentum: weight ``c`` of the newest batch, in (0, 1].

    Example:
        >>> obs = MovingAverageObserver(momentum=0.5)
        >>> obs.update(torch.tensor([0.0, 4.0])); obs.update(torch.tensor([0.0, 2.0]))
        >>> float(obs.range()[1])
        3.0
    """

    def __init__(self, granularity: Granularity = PER_TENSOR, momentum: float = 0.1) -> None:
        super().__init__(granularity)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def _merge(self, mn: torch.Tensor, mx: torch.Tensor) -> None:
        if self.min is None or self.max is None:
            self.min, self.max = mn, mx
        else:
            c = self.momentum
            self.min = (1 - c) * self.min + c * mn
            self.max = (1 - c) * self.max + c * mx


class _SampleObserver(Observer):
    """Keeps up to ``max_samples`` values (a seeded random subset once more arrive) for per-tensor searches."""

    def __init__(self, granularity: Granularity = PER_TENSOR, max_samples: int = 1 << 18, seed: int = 0) -> None:
        if not isinstance(granularity, PerTensor):
            raise ValueError(f"{type(self).__name__} supports PerTensor() only, got {granularity!r}")
        super().__init__(granularity)
        self.max_samples = max_samples
        self._gen = torch.Generator().manual_seed(seed)
        self.samples = torch.empty(0)

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        flat = x.detach().reshape(-1).float().cpu()
        if flat.numel() > self.max_samples:
            flat = flat[torch.randperm(flat.numel(), generator=self._gen)[: self.max_samples]]
        both = torch.cat([self.samples, flat])
        if both.numel() > self.max_samples:
            both = both[torch.randperm(both.numel(), generator=self._gen)[: self.max_samples]]
        self.samples = both


class PercentileObserver(_SampleObserver):
    """Clip the range at the ``percentile``-th and ``(100 − percentile)``-th percentiles of the values seen.

    Example:
        >>> obs = PercentileObserver(percentile=99.0)
        >>> obs.update(torch.cat([torch.linspace(-1, 1, 999), torch.tensor([100.0])]))
        >>> float(obs.range()[1]) < 2
        True
    """

    def __init__(
        self, granularity: Granularity = PER_TENSOR, percentile: float = 99.99, max_samples: int = 1 << 18
    ) -> None:
        super().__init__(granularity, max_samples)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        super().range()  # raises without data
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        lo, hi = torch.quantile(self.samples, q)
        return lo.reshape(1), hi.reshape(1)


class MSEObserver(_SampleObserver):
    """Choose the clipping factor ``α`` on a grid that minimises the quantization MSE of the values seen.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> obs = MSEObserver(); obs.update(torch.cat([torch.randn(4000, generator=g), torch.tensor([40.0])]))
        >>> float(obs.range()[1]) < 40  # the lone outlier is clipped
        True
    """

    def __init__(
        self,
        granularity: Granularity = PER_TENSOR,
        grid: int = 100,
        max_samples: int = 1 << 16,
        bits: int = 8,
        symmetric: bool = True,
    ) -> None:
        super().__init__(granularity, max_samples)
        self.grid, self.bits, self.symmetric = grid, bits, symmetric

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped range for the observer's own ``bits`` / ``symmetric``."""
        return self._search(self.bits, self.symmetric)

    def qparams(self, *, bits: int = 8, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the range searched for the scheme asked for: the error of a symmetric grid
        is not the error of the asymmetric one the caller will use (on a tensor that is mostly positive the
        symmetric grid's steps are twice as coarse, and its search clips far more)."""
        mn, mx = self._search(bits, symmetric)
        return qparams_from_minmax(mn, mx, bits=bits, symmetric=symmetric)

    def _search(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mn, mx = super().range()
        x = self.samples
        best, best_err = (mn, mx), float("inf")
        for i in range(self.grid, 0, -1):
            alpha = i / self.grid
            s, z = qparams_from_minmax(mn * alpha, mx * alpha, bits=bits, symmetric=symmetric)
            err = float((dequantize(quantize(x, s, z, bits=bits, symmetric=symmetric), s, z) - x).pow(2).mean())
            if err < best_err:
                best, best_err = (mn * alpha, mx * alpha), err
        return best


_KINDS = {
    "minmax": MinMaxObserver,
    "moving-average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(kind: str, granularity: Granularity = PER_TENSOR) -> Observer:
    """A fresh observer by name: ``"minmax"``, ``"moving-average"``, ``"percentile"`` or ``"mse"``.

    Example:
        >>> type(make_observer("mse")).__name__
        'MSEObserver'
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown observer {kind!r}; use one of {', '.join(_KINDS)}")
    return _KINDS[kind](granularity)
