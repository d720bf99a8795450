"""``Int4W4A8Linear``: grouped int4 weights in the W4A8 kernel's packed layout, int8 activations.

The weight is stored once, in the tile layout of :mod:`torchslim.kernels.layout` (``packed`` uint8
``[ceil(N/16), K/g, 64 + 8·g]``: per tile of 16 output rows and group, the rows' bf16 scales and zeros
then their 4-bit codes), with ``ŵ = (q − 8) · scale + zero`` per (row, group), the convention of
:class:`~torchslim.quantization.int4.modules.Int4WeightOnlyLinear`. That layout is what ``state_dict``
and ``ts.save`` hold, so a load is bit-identical and needs no conversion. Buffers: ``packed``,
``bias`` ``[N]`` float32 or absent, ``input_scale`` ``[K]`` float32 or absent (AWQ's ``1/s``).

Forward on the CPU, for any number of rows (tokens) ``M``, decode and prefill alike:
:func:`torchslim.kernels.w4a8_linear`: activations quantized to int8 per row inside the kernel
(symmetric, one scale per token, as LLM.int8(), Dettmers et al., arXiv:2208.07339), int4 codes widened
in registers and multiplied with VNNI dot products: the scheme of llama.cpp's Q4_0 × Q8_0. For many rows
the kernel reuses each unpacked weight chunk across passes of 8 rows, an int8 GEMM that outruns the
dequantize + bf16 GEMM path (no bf16 copy of the weight is built). On a CPU without AVX-512 VNNI the
kernel runs its AVX2 or portable C++ path, and when it cannot be built the torch reference: the same
sums everywhere. On other devices the weight is dequantized per call (:func:`dequantize_tiles`) and
multiplied in the input's dtype (bf16 for float32 inputs), activations unquantized.

Input values that are NaN are not guaranteed to reach the output on the kernel path: the kernel's
per-row ``max |x|`` may drop a NaN, so the row is quantized from its finite entries (an Inf gives a
NaN scale, which does propagate). Guarding every call would cost a reduction per layer per token;
check inputs upstream when they can hold NaN.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> lin = nn.Linear(128, 40)
    >>> q = Int4W4A8Linear.from_float(lin, group_size=64)
    >>> x = torch.randn(3, 128)
    >>> q.packed.shape, bool(sqnr(lin(x), q(x)) > 15)
    (torch.Size([3, 2, 576]), True)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from torchslim import kernels
from torchslim.core.modspec import register_spec_module
from torchslim.kernels import hugepages
from torchslim.quantization.int4.linear_base import Int4LinearBase
from torchslim.quantization.int4.primitives import Int4Tensors

__all__ = ["Int4W4A8Linear", "dequantize_tiles"]

_TILE = 16  # output rows per tile of the packed layout
_HEAD = 64  # bytes per (tile, group) head: 16 bf16 scales then 16 bf16 zeros


def dequantize_tiles(
    packed: torch.Tensor, out_features: int, group_size: int, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The weight ``[N, K]`` of a packed tensor, in ``dtype`` (the forward off the CPU, and ``codes``).

    Computes ``(q − 8) · scale + zero`` in float32 and rounds once to ``dtype``, so the result equals
    :func:`torchslim.kernels.dequantize` cast to ``dtype``.

    Example:
        >>> codes = torch.randint(0, 16, (20, 64), dtype=torch.uint8)
        >>> s, z = torch.rand(20, 2).bfloat16(), torch.randn(20, 2).bfloat16()
        >>> p = kernels.pack_int4(codes, s, z, 32)
        >>> torch.equal(dequantize_tiles(p, 20, 32, torch.float32), kernels.dequantize(p, 20, 32))
        True
    """
    tiles, groups, _ = packed.shape
    chunks = group_size // 8
    head = packed[:, :, :_HEAD].contiguous().view(torch.bfloat16).view(tiles, groups, 2, _TILE).float()
    scale = head[:, :, 0].permute(0, 2, 1).reshape(tiles, _TILE, groups, 1, 1, 1)
    zero = head[:, :, 1].permute(0, 2, 1).reshape(tiles, _TILE, groups, 1, 1, 1)
    # body byte (tile, group, chunk c, row r, i): column 8c + i in the low nibble, 8c + 4 + i in the high one.
    # The codes are written straight into the output's row-major order [tile, row, group, chunk, half, i].
    body = packed[:, :, _HEAD:].view(tiles, groups, chunks, _TILE, 4).permute(0, 3, 1, 2, 4)
    q = torch.empty(tiles, _TILE, groups, chunks, 2, 4, dtype=torch.float32, device=packed.device)
    torch.bitwise_and(body, 0x0F, out=q[:, :, :, :, 0])
    torch.bitwise_right_shift(body, 4, out=q[:, :, :, :, 1])
    torch.addcmul(zero, q.sub_(8), scale, out=q)  # one pass, in place: one weight-sized float buffer
    w = q.view(tiles * _TILE, groups * group_size).to(dtype)
    return w[:out_features]


@register_spec_module
class Int4W4A8Linear(Int4LinearBase):
    """Linear with grouped int4 weights in the W4A8 kernel layout; int8 activations per token on the CPU.

    Args and Raises: as :class:`~torchslim.quantization.int4.linear_base.Int4LinearBase`.
    """

    packed: torch.Tensor

    # ------------------------------------------------------------------ construction
    # (the constructor, from_tensors and from_float: Int4LinearBase's; the
    # ``Int4WeightOnly(activations="int8")`` config runs GPTQ etc.)

    def _register_weights(self, device: Any) -> None:
        shape = kernels.packed_shape(self.out_features, self.in_features, self.group_size)
        if device is None or torch.device(device).type == "cpu":
            # Decode streams every packed weight once per token: in huge pages a core reads it faster
            # (torchslim.kernels.hugepages). Packing and loading copy into this buffer, so they keep it there.
            packed = hugepages.zeros(shape, torch.uint8)
        else:
            packed = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.register_buffer("packed", packed)

    def _store_codes(self, t: Int4Tensors) -> None:
        self.packed.copy_(kernels.pack_int4(t.q.cpu(), t.scale.cpu(), t.zero.cpu(), self.group_size))

    # ------------------------------------------------------------------ compute

    def codes(self) -> torch.Tensor:
        """The codes ``[N, K]`` uint8 (0..15)."""
        return kernels.unpack_int4(self.packed, self.out_features, self.group_size)[0]

    def _dequantized_codes(self) -> torch.Tensor:
        return dequantize_tiles(self.packed, self.out_features, self.group_size, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = self._scaled_rows(x)
        b = self._buffers  # direct reads: nn.Module.__getattr__ costs ~1 µs, and decode calls this per layer per token
        if x.device.type == "cpu":
            y = kernels.w4a8_linear(x2, b["packed"], self.out_features, self.group_size, b["bias"])
        else:
            dtype = torch.bfloat16 if x.dtype in (torch.float32, torch.bfloat16) else x.dtype
            w = dequantize_tiles(b["packed"], self.out_features, self.group_size, dtype)
            bias = b["bias"].to(dtype) if b["bias"] is not None else None
            y = F.linear(x2.to(dtype), w, bias).to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)
