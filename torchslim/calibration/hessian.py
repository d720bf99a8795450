"""Layer-wise Hessians for second-order methods (SparseGPT, GPTQ, AWQ's error check).

For a layer ``Y = W X`` with calibration inputs ``X`` (``[in, N]``), the Hessian of the squared
reconstruction error is ``H = 2/N · X Xᵀ``; SparseGPT and GPTQ work with the upper Cholesky factor
of ``(H + λI)⁻¹`` (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers").

Example:
    >>> import torch
    >>> h = hessian_from_inputs(torch.eye(2))
    >>> h.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    >>> u = inverse_cholesky(h, damp=0.0)
    >>> torch.allclose(u.T @ u, torch.linalg.inv(h))
    True
"""

from __future__ import annotations

import torch

__all__ = ["hessian_from_inputs", "inverse_cholesky"]


def hessian_from_inputs(x: torch.Tensor) -> torch.Tensor:
    """H = 2/N · X Xᵀ for inputs ``[in, N]`` (float64 for stable inversion)."""
    x = x.double()
    return 2.0 * (x @ x.T) / max(1, x.shape[1])


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp · mean(diag H); raises damping until it works."""
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0  # inputs that never fire: any weight there can go, keep H invertible
    mean = torch.mean(torch.diag(h)).item() or 1.0
    for factor in (1.0, 10.0, 100.0, 1000.0):
        try:
            hd = h + (damp * factor * mean) * torch.eye(h.shape[0], dtype=h.dtype)
            hinv = torch.cholesky_inverse(torch.linalg.cholesky(hd))
            return torch.linalg.cholesky(hinv, upper=True)
        except RuntimeError:
            continue
    raise torch.linalg.LinAlgError("Hessian is not positive definite even with 1000x damping")
