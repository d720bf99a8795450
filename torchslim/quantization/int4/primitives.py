"""Pure int4 math: group-wise asymmetric 4-bit quantize / dequantize, packing two values per byte.

A weight ``W`` ``[N, K]`` (``N`` = out_features, ``K`` = in_features) is split along ``K`` into
``G = K / g`` groups of ``g`` columns (g ∈ {32, 64, 128, 256}). Each (row, group) has a ``scale`` and
a float ``zero``; the 4-bit code ``q ∈ {0, …, 15}`` dequantizes as

    ŵ = (q − 8) · scale + zero

which is the convention of torch's int4 kernels (``aten._weight_int4pack_mm_for_cpu`` and
``aten._weight_int4pack_mm``, as their outputs show), so the stored scales and zeros
feed them without conversion. Min-max parameters: ``scale = (max − min) / 15``,
``zero = min + 8 · scale``. Scales and zeros are rounded to bf16 (how they are stored) *before*
the codes are chosen, so the codes are the nearest ones for the stored parameters.

Packing: byte ``i`` of a row holds column ``2i`` in the high nibble and ``2i + 1`` in the low one
(``packed = q[:, 0::2] << 4 | q[:, 1::2]``), the order CUDA's ``_convert_weight_to_int4pack`` reads.

Example:
    >>> import torch
    >>> w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    >>> scale, zero = minmax_qparams(w, 32)
    >>> q = quantize_int4(w, scale, zero, 32)
    >>> q.shape, scale.shape, int(q.max()) <= 15
    (torch.Size([4, 64]), torch.Size([4, 2]), True)
    >>> torch.equal(unpack_int4(pack_int4(q)), q)
    True
    >>> bool((w - dequantize_int4(q, scale, zero, 32)).abs().max() <= scale.max() / 2 + 1e-6)
    True
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from torchslim.quantization.common.primitives import group_view

__all__ = [
    "GROUP_SIZES",
    "Int4Tensors",
    "check_group_size",
    "dequantize_int4",
    "dequantize_packed_int4",
    "minmax_qparams",
    "pack_int4",
    "quantize_int4",
    "to_storage",
    "unpack_int4",
]

GROUP_SIZES = (32, 64, 128, 256)
# Smallest scale: a constant group (max == min) must not divide by zero; its codes all land on 8.
_MIN_SCALE = 1e-8


class Int4Tensors(NamedTuple):
    """Codes ``q`` ``[N, K]`` uint8 in 0..15, ``scale`` and ``zero`` ``[N, K/g]`` float32 (bf16 values)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor


def check_group_size(in_features: int, group_size: int) -> str | None:
    """Why ``group_size`` cannot quantize ``in_features`` columns, or None when it can.

    Example:
        >>> check_group_size(384, 128) is None, check_group_size(100, 128)
        (True, 'group size 128 does not divide in_features 100')
    """
    if group_size not in GROUP_SIZES:
        return f"group size {group_size} is not one of {GROUP_SIZES}"
    if in_features % group_size:
        return f"group size {group_size} does not divide in_features {in_features}"
    return None


def to_storage(t: torch.Tensor) -> torch.Tensor:
    """Round to the stored precision (bf16) and back to float32: parameters are chosen on what is kept."""
    return t.to(torch.bfloat16).float()


def minmax_qparams(
    w: torch.Tensor, group_size: int, clip: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max ``(scale, zero)`` ``[N, G]`` float32 (rounded to bf16) for ``w`` ``[N, K]``.

    ``clip`` (a scalar or ``[N, G]``, in (0, 1]) shrinks the range around its midpoint; AWQ and
    GPTQ's MSE option search it.

    Example:
        >>> s, z = minmax_qparams(torch.tensor([[-1.0, 2.0] * 16]), 32)
        >>> round(s.item(), 3), round(z.item(), 3)
        (0.2, 0.602)
    """
    g = group_view(w.float(), group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    if not isinstance(clip, float) or clip != 1.0:
        mid = (hi + lo) / 2
        half = (hi - lo) / 2 * clip
        lo, hi = mid - half, mid + half
    scale = to_storage(((hi - lo) / 15).clamp_min(_MIN_SCALE))
    zero = to_storage(lo + 8 * scale)
    return scale, zero


def quantize_int4(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """Nearest codes ``q = clamp(round((w − zero) / scale) + 8, 0, 15)`` ``[N, K]`` uint8.

    Example:
        >>> quantize_int4(torch.tensor([[0.0, 1.0] * 16]), torch.tensor([[0.5]]), torch.tensor([[0.0]]), 32)[0, :2]
        tensor([ 8, 10], dtype=torch.uint8)
    """
    g = group_view(w.float(), group_size)
    q = torch.round((g - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1)) + 8
    return q.clamp_(0, 15).reshape(w.shape).to(torch.uint8)


def dequantize_int4(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``ŵ = (q − 8) · scale + zero`` ``[N, K]`` in ``dtype`` (computed in float32).

    Example:
        >>> dequantize_int4(torch.tensor([[8, 10] * 16], dtype=torch.uint8), torch.tensor([[0.5]]), torch.tensor([[0.0]]), 32)[0, :2]
        tensor([0., 1.])
    """
    w = q.to(torch.float32, copy=True)  # never the caller's tensor, which is updated in place below
    g = group_view(w, group_size).sub_(8)
    # One pass into the codes' own float buffer: the result is the only weight-sized float tensor made
    # (a float stand-in of an LLM head dequantizes a 400 MB matrix).
    torch.addcmul(zero.float().unsqueeze(-1), g, scale.float().unsqueeze(-1), out=g)
    return w.to(dtype)


def dequantize_packed_int4(
    packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """:func:`dequantize_int4` of :func:`pack_int4`'s output ``[N, K/2]``, unpacking into one buffer.

    Example:
        >>> q = torch.tensor([[8, 10] * 16], dtype=torch.uint8)
        >>> s, z = torch.tensor([[0.5]]), torch.tensor([[0.0]])
        >>> torch.equal(dequantize_packed_int4(pack_int4(q), s, z, 32), dequantize_int4(q, s, z, 32))
        True
    """
    codes = torch.empty(*packed.shape, 2, dtype=torch.uint8, device=packed.device)
    torch.bitwise_right_shift(packed, 4, out=codes[..., 0])
    torch.bitwise_and(packed, 0x0F, out=codes[..., 1])
    return dequantize_int4(codes.view(*packed.shape[:-1], packed.shape[-1] * 2), scale, zero, group_size, dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two codes per byte: ``[N, K]`` (0..15) -> ``[N, K/2]`` uint8, column ``2i`` in the high nibble.

    Raises:
        ValueError: ``K`` is odd or a code is outside 0..15.

    Example:
        >>> pack_int4(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8))
        tensor([[ 18, 240]], dtype=torch.uint8)
    """
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {q.shape[-1]}")
    qi = q.to(torch.int16)
    if qi.numel() and (int(qi.min()) < 0 or int(qi.max()) > 15):
        raise ValueError("int4 codes must be in 0..15")
    return ((qi[..., 0::2] << 4) | qi[..., 1::2]).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``[N, K/2]`` uint8 -> ``[N, K]`` uint8 codes.

    Example:
        >>> unpack_int4(torch.tensor([[18, 240]], dtype=torch.uint8))
        tensor([[ 1,  2, 15,  0]], dtype=torch.uint8)
    """
    hi = packed >> 4
    lo = packed & 0x0F
    return torch.stack([hi, lo], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
