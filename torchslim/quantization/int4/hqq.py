"""HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models"):
calibration-free optimisation of the group zero-points.

With ``ŵ = s · (q − z)`` (scale ``s`` from min-max, kept fixed as in the paper) HQQ minimises the
sparsity-promoting ``‖W − ŵ‖_p^p`` (``p`` < 1: a few large errors are cheaper than many small ones)
by splitting it with an auxiliary error ``E`` and alternating closed-form steps:

    E ← shrink_p(W − s(q − z), β),     shrink_p(x, β) = sign(x) · relu(|x| − |x|^(p−1) / β)
    q ← clamp(round(W / s + z), 0, 15)
    z ← mean_g(q − (W − E) / s)
    β ← κ β

and keeps the zero-points of the iteration with the lowest ``‖W − ŵ‖₁`` (HQQ stops early when the
error grows). The result is written in the int4 kernels' convention ``ŵ = (q − 8) · scale + zero``
with ``zero = (8 − z) · s`` and rounded to the stored bf16 before the final codes are chosen.

Example:
    >>> import torch
    >>> from torchslim.quantization.int4.primitives import dequantize_int4
    >>> from torchslim.quantization.int4.rtn import rtn_quantize
    >>> w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0)) ** 3  # heavy tails
    >>> l1 = lambda t: float((dequantize_int4(*t, 64) - w).abs().mean())
    >>> l1(hqq_quantize(w, 64)) < l1(rtn_quantize(w, 64))
    True
"""

from __future__ import annotations

import torch

from torchslim.quantization.int4.primitives import Int4Tensors, minmax_qparams, quantize_int4, to_storage

__all__ = ["hqq_quantize", "shrink_lp"]


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalised soft-threshold ``sign(x) · relu(|x| − |x|^(p−1) / β)`` (prox of ``‖·‖_p^p / β``).

    Example:
        >>> shrink_lp(torch.tensor([-2.0, 0.01, 3.0]), beta=10.0, p=1.0).tolist()
        [-1.899999976158142, 0.0, 2.9000000953674316]
    """
    a = x.abs()
    return torch.sign(x) * torch.relu(a - a.clamp_min(1e-12).pow(p - 1) / beta)


def hqq_quantize(
    w: torch.Tensor,
    group_size: int,
    *,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> Int4Tensors:
    """Int4 groups of ``w`` ``[N, K]`` with HQQ-optimised zero-points (no calibration data).

    Args:
        w: float weight ``[N, K]``.
        group_size: columns per group (must divide K).
        iters: half-quadratic iterations.
        p: the ``ℓ_p`` norm (< 1) of the error.
        beta, kappa: the penalty weight and its growth per iteration.

    Returns:
        :class:`~torchslim.quantization.int4.primitives.Int4Tensors` (kernel convention, bf16 values).
    """
    n, k = w.shape
    wg = w.detach().float().reshape(n, k // group_size, group_size)
    scale, zero_k = minmax_qparams(w.detach().float(), group_size)
    s = scale.unsqueeze(-1)  # [N, G, 1]
    z = (8.0 - zero_k.unsqueeze(-1) / s).float()  # ŵ = s (q − z)  <=>  zero = (8 − z) s
    best_z, best_err = z.clone(), None
    for _ in range(iters):
        q = torch.round(wg / s + z).clamp_(0, 15)
        w_hat = s * (q - z)
        err = (wg - w_hat).abs().mean(dim=-1, keepdim=True)  # [N, G, 1]: keep the best per group
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best_z = torch.where(better, z, best_z)
            best_err = torch.where(better, err, best_err)
        e = shrink_lp(wg - w_hat, beta, p)
        z = (q - (wg - e) / s).mean(dim=-1, keepdim=True)
        beta *= kappa
    zero = to_storage(((8.0 - best_z) * s).squeeze(-1))
    return Int4Tensors(quantize_int4(w.detach().float(), scale, zero, group_size), scale, zero)
