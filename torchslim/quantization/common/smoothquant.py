"""SmoothQuant factors (the calibration pass itself is :mod:`torchslim.calibration`).

SmoothQuant (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models") migrates activation outliers into the weights with a per-input-channel factor

    s_j = max|X_j|^α / max|W_{:, j}|^(1−α),      X W ᵀ = (X diag(s)⁻¹) (W diag(s))ᵀ

so both factors quantize well; ``α`` (0.5 by default) sets how much difficulty moves to the weights.

Example:
    >>> import torch
    >>> act = torch.tensor([100.0, 1.0]); w = torch.tensor([[1.0, 1.0]])
    >>> smooth_factors(act, w, alpha=0.5)
    tensor([10.,  1.])
"""

from __future__ import annotations

import torch

__all__ = ["smooth_factors"]

# Bounds on s: an all-zero channel (dead ReLU, padding) must not give 0 or inf.
_S_MIN, _S_MAX = 1e-4, 1e4


def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's ``s`` ``[K]`` from activation channel maxima ``[K]`` and a weight ``[N, K]`` (finite, > 0)."""
    a = act_absmax.float().clamp(min=1e-5)
    w = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(_S_MIN, _S_MAX)
