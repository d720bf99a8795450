"""The W4A8 product in plain torch: the reference the C++ kernel is tested against, and its fallback.

Activations are quantized per row (token), symmetric, to int8 codes ``a = round(x · 127 / max|x|)``
(half to even) with scale ``max|x| / 127``; weights are the grouped int4 codes of
:mod:`torchslim.kernels.layout`. Per group the integer dot product is exact in float32 (its magnitude
stays below 2^24 for groups up to 8192 columns), so this computes the kernel's sums up to the order in
which the group terms are added.

Example:
    >>> import torch
    >>> a, s = quantize_rows(torch.tensor([[0.5, -1.0, 0.25]]))
    >>> a.tolist(), round(float(s[0]) * 127, 6)
    ([[64, -127, 32]], 1.0)
"""

from __future__ import annotations

import torch

from torchslim.kernels.layout import unpack_int4

__all__ = ["dequantize", "quantize_rows", "w4a8_linear_reference"]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of ``x [M, K]``: codes (int8 ``[M, K]``) and scales (float32 ``[M]``)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    # A true division (``127.0 / amax`` would be ``reciprocal(amax) * 127``: another rounding than the kernel's).
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    codes = (xf * inv[:, None]).round().clamp(-127, 127).to(torch.int8)
    return codes, amax / 127.0


def dequantize(
    packed: torch.Tensor, out_features: int, group_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The weight ``[N, K]`` a packed tensor stands for: ``(q − 8) · scale + zero`` per group."""
    codes, scales, zeros = unpack_int4(packed, out_features, group_size)
    n, k = codes.shape
    q = codes.float().view(n, k // group_size, group_size)
    w = (q - 8) * scales.float()[..., None] + zeros.float()[..., None]
    return w.view(n, k).to(dtype)


def w4a8_linear_reference(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, group_size: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x [..., K]`` times the packed weight with activations quantized to int8 per row, in torch ops.

    Returns the input's dtype, shape ``[..., out_features]``.
    """
    codes, scales, zeros = unpack_int4(packed, out_features, group_size)
    n, k = codes.shape
    groups = k // group_size
    x2 = x.reshape(-1, k)
    a, sx = quantize_rows(x2)
    af = a.float().view(-1, groups, group_size)
    dots = torch.einsum("mgk,ngk->mng", af, codes.float().view(n, groups, group_size))
    sums = af.sum(dim=-1)  # [M, G]
    s, z = scales.float(), zeros.float()
    y = (dots * s).sum(dim=-1) + sums @ (z - 8 * s).t()
    y = y * sx[:, None]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)
