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


def inverse_cholesky(h: torch.Tensor, damp: float, *, overwrite: bool = False) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of (H + λI)⁻¹ (``Uᵀ U = (H + λI)⁻¹``) with λ = damp · mean(diag H);
    raises damping ×10 up to ×1000 until H + λI factors.

    With ``J`` the order reversal, ``J H J = L Lᵀ`` gives ``H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J)`` with
    ``J L⁻¹ J`` upper triangular: one Cholesky factorisation and one triangular solve, instead of the
    three factorisations of ``cholesky(cholesky_inverse(cholesky(H)), upper=True)`` (same factor,
    unique; a quarter of the time). The factorisation reads H's upper triangle (H is symmetric) and
    works in place. Works in ``h``'s dtype in one ``K × K`` buffer besides ``h``; with
    ``overwrite`` ``h``'s memory is the second buffer (its contents are lost), otherwise ``h`` is left
    unchanged and a third one is used.
    """
    k = h.shape[0]
    diag = torch.diagonal(h)
    dead = diag == 0  # inputs that never fire: any weight there can go, keep H invertible
    mean = torch.mean(torch.where(dead, torch.ones_like(diag), diag)).item() or 1.0
    rev = torch.arange(k - 1, -1, -1)
    work = torch.empty_like(h)
    status = torch.empty((), dtype=torch.int32)
    for factor in (1.0, 10.0, 100.0, 1000.0):
        _reversed_into(work, h, rev)
        d = torch.diagonal(work)
        d[dead.flip(0)] = 1.0
        d += damp * factor * mean
        # J H J = L Lᵀ, L in place. LAPACK works on column-major storage: a row-major matrix is first
        # copied (one K × K buffer more), so the factorisation reads ``work``'s storage column-major,
        # through its transpose view; for a symmetric H that is the same matrix (its upper triangle is read).
        torch.linalg.cholesky_ex(work.mT, out=(work.mT, status))
        if int(status) == 0:
            break
    else:
        raise torch.linalg.LinAlgError("Hessian is not positive definite even with 1000x damping")
    inv = h if overwrite else torch.empty_like(h)
    inv.zero_()
    torch.diagonal(inv).fill_(1.0)
    torch.linalg.solve_triangular(work.mT, inv, upper=False, out=inv)  # L⁻¹, in place of the identity
    _reversed_into(work, inv, rev)  # U = J L⁻¹ J
    if not bool(torch.isfinite(torch.diagonal(work)).all()):
        raise torch.linalg.LinAlgError("Hessian inverse is not finite")
    return work


def _reversed_into(dst: torch.Tensor, src: torch.Tensor, rev: torch.Tensor) -> None:
    """``dst = J src J`` (rows and columns in reverse order), a band of rows at a time (small temporaries)."""
    k = src.shape[0]
    rows = max(1, (1 << 20) // max(1, k))
    for start in range(0, k, rows):
        dst[start : start + rows] = src.index_select(0, rev[start : start + rows]).flip(1)
