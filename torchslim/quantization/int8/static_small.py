"""Small 1×1 static int8 convolutions through torchslim's own C++ loop instead of oneDNN.

A oneDNN int8 convolution call pays a fixed setup (primitive lookup, scales and zero points wrapped as
memory objects, output reorders) that at batch 1 outweighs the arithmetic of small layers: the
squeeze-and-excite convolutions on 1 × 1 maps, and the 1×1 layers of the last stages of MobileNet /
EfficientNet. :func:`small_conv1x1` runs such a layer through :func:`torchslim.kernels.qconv.conv1x1`
(AVX-512 VNNI, no setup, on the calling thread when the work is small) with the same epilogue: the
per-channel scale, bias, an optional residual operand, the fused activation and the requantization to the
next layer's uint8 codes. The choice depends only on the layer and the input shape (below
:data:`SMALL_MACS` multiply-adds), so a given input always takes the same kernel. The integer sums are the
same as oneDNN's; the float epilogue may round an output code the other way at an exact tie.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.core.context import Context
    >>> from torchslim.quantization.int8.static import Int8Static
    >>> m = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    >>> x = torch.rand(1, 8, 2, 2)
    >>> _ = compress_(m, Int8Static(), ctx=Context(calibration=[(x,)]))
    >>> y = m(x)  # both convolutions are small: the C++ loop where the CPU has AVX-512 VNNI
    >>> y.shape, y.dtype
    (torch.Size([1, 4, 2, 2]), torch.float32)
"""

from __future__ import annotations

from typing import Any

import torch

from torchslim.kernels import qconv

__all__ = ["SMALL_MACS", "eligible", "small_conv1x1"]

# Layers under this many multiply-adds per call take the C++ loop (the order of magnitude where oneDNN's
# per-call setup and the arithmetic cost about the same; larger layers keep oneDNN's blocked kernels).
SMALL_MACS = 1 << 22


def eligible(conv: Any, x: torch.Tensor) -> bool:
    """Whether ``conv`` (an ``Int8StaticConv2d`` on its oneDNN path) runs on ``x`` through the C++ loop."""
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
        return False
    if x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] * conv.in_channels * conv.out_channels > SMALL_MACS:
        return False
    return qconv.vnni()


def _packed(conv: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(packed weight, wsum, scale, bias)``, rebuilt when a buffer changes (as the oneDNN cache is)."""
    bufs = (conv.weight, conv.weight_scale, conv.bias, conv.input_scale)
    key = tuple((t.data_ptr(), t._version) for t in bufs)
    cached = getattr(conv, "_qconv", None)
    if cached is None or cached[0] != key:
        packed, wsum = qconv.pack_conv1x1(conv.weight)
        scale = (conv.weight_scale.float() * float(conv.input_scale)).contiguous()
        cached = (key, (packed, wsum, scale, conv.bias.float().contiguous()))
        conv._qconv = cached
    return cached[1]


def small_conv1x1(
    conv: Any,
    qx: torch.Tensor,
    x_zp: int,
    act: str,
    out: tuple[float, int, torch.dtype],
    accum: tuple[torch.Tensor, float, int] | None = None,
) -> torch.Tensor:
    """``conv`` on uint8 codes ``qx`` (channels-last, zero point ``x_zp``): ``out`` is the oneDNN call's
    ``(scale, zero point, dtype)`` of the result, ``accum`` an optional residual ``(codes, scale, zero point)``."""
    packed, wsum, scale, bias = _packed(conv)
    out_scale, out_zp, dtype = out
    return qconv.conv1x1(
        qx, packed, wsum, scale, bias, x_zp, act or "none", out_scale, out_zp, dtype == torch.uint8, accum
    )
