"""Signal-to-quantization-noise ratio, in the value space or in a layer's output space.

``SQNR = 10 · log10(‖ref‖² / ‖ref − approx‖²)`` dB. With the Hessian ``H = 2/T · X Xᵀ`` of a layer's
calibration inputs ``X`` ``[K, T]``, both norms of a weight ``[N, K]`` are taken in the output space,
``‖Δ‖²_H = tr(Δ H Δᵀ)`` (twice the mean squared output error over the calibration tokens, as in GPTQ's
objective: Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), without keeping the tokens.

Example:
    >>> import torch
    >>> round(sqnr(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.1])), 1)
    23.0
    >>> round(sqnr(torch.ones(1, 2), torch.full((1, 2), 1.5), 2 * torch.eye(2)), 2)
    6.02
"""

from __future__ import annotations

import math

import torch

__all__ = ["output_error", "sqnr"]


def output_error(delta: torch.Tensor, hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-output error of a weight change ``ΔW`` ``[N, K]``: ``tr(ΔW H ΔWᵀ)``; without ``H``: ``‖ΔW‖²``.

    Example:
        >>> float(output_error(torch.ones(1, 2), 2 * torch.eye(2)))
        4.0
    """
    d = delta.to(torch.float64 if hessian is None else hessian.dtype)
    if hessian is None:
        return (d * d).sum()
    return ((d @ hessian) * d).sum()


def sqnr(reference: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor | None = None) -> float:
    """SQNR in dB of ``approx`` against ``reference`` (any shape; weights ``[N, K]`` when ``hessian`` is given).

    ``inf`` when the two are equal, ``-inf`` for an all-zero reference that is not matched. Computed in
    float64.

    Example:
        >>> sqnr(torch.ones(3), torch.ones(3))
        inf
    """
    ref = reference.detach().double()
    h = None if hessian is None else hessian.double()
    signal = float(output_error(ref, h))
    noise = float(output_error(ref - approx.detach().double(), h))
    if noise <= 0.0:
        return float("inf")
    if signal <= 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)
