"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with second-order weight reconstruction.

For a layer ``Y = W X`` and calibration inputs X (``[in, tokens]``), the Hessian of the layer-wise
squared error is ``H = 2 X Xᵀ``. Columns are processed left to right in blocks; inside a block, a
weight's removal cost is ``w² / [H⁻¹]_jj²`` (optimal brain surgeon), the lowest-cost weights of each
row are masked (per block for unstructured, per group of m for N:M), and the error of every removed
or kept column is propagated to the remaining columns with ``δ = −(w_j / [H⁻¹]_jj) · [H⁻¹]_{j,j:}``,
using the upper Cholesky factor of H⁻¹ as in GPTQ. Written here from the paper's algorithm; the
same Hessian machinery serves GPTQ.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> w, x = torch.randn(8, 16), torch.randn(16, 64)
    >>> w2, mask = sparsegpt_prune(w, hessian_from_inputs(x), sparsity=0.5)
    >>> int(mask.sum()), bool(((w2 != 0) <= mask).all())
    (64, True)
"""

from __future__ import annotations

import torch

from torchslim.calibration.hessian import hessian_from_inputs, inverse_cholesky

__all__ = ["hessian_from_inputs", "sparsegpt_prune"]


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    *,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (``[out, in]``) to ``sparsity`` (or n:m when ``m``), reconstructing the rest.

    Returns:
        ``(new_weight, mask)``; new_weight is zero wherever mask is False, in weight's dtype.

    Raises:
        torch.linalg.LinAlgError: H stays singular even with heavy damping (callers fall back).
    """
    w = weight.detach().double().clone()
    rows, cols = w.shape
    if m:
        if cols % m:
            raise ValueError(f"input dimension {cols} is not a multiple of m={m}")
        blocksize = max(m, blocksize // m * m)
    u = inverse_cholesky(hessian.double(), damp)
    mask = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        wb = w[:, start:end].clone()
        ub = u[start:end, start:end]
        errs = torch.zeros_like(wb)
        diag = torch.diag(ub)
        if not m:
            cost = wb**2 / diag.reshape(1, -1) ** 2
            # telescoping per-block counts: the layer total is exactly round(sparsity * numel)
            k = int(round(sparsity * rows * end)) - int(round(sparsity * rows * start))
            if k:
                order = torch.sort(cost.reshape(-1), stable=True).indices[:k]
                block_mask = torch.ones(cost.numel(), dtype=torch.bool)
                block_mask[order] = False
                mask[:, start:end] = block_mask.reshape(cost.shape)
        for j in range(end - start):
            col = start + j
            if m and j % m == 0:
                cost = wb[:, j : j + m] ** 2 / diag[j : j + m].reshape(1, -1) ** 2
                drop = torch.topk(cost, m - n, dim=1, largest=False).indices
                mask[:, col : col + m].scatter_(1, drop, False)
            q = wb[:, j] * mask[:, col]
            err = (wb[:, j] - q) / diag[j]
            wb[:, j:] -= err.reshape(-1, 1) * ub[j, j:].reshape(1, -1)
            wb[:, j] = q
            errs[:, j] = err
        w[:, start:end] = wb
        w[:, end:] -= errs @ u[start:end, end:]
    w[~mask] = 0
    return w.to(weight.dtype), mask
