"""1×1 static int8 convolutions through torchslim's own C++ loops instead of oneDNN.

A oneDNN int8 convolution call pays a fixed setup (primitive lookup, scales and zero points wrapped as
memory objects, output reorders) that at batch 1 outweighs the arithmetic of small layers: the
squeeze-and-excite convolutions on 1 × 1 maps, and the 1×1 layers of the last stages of MobileNet /
EfficientNet. :func:`small_conv1x1` runs a 1×1 stride-1 layer through :func:`torchslim.kernels.qconv.conv1x1`
(AMX tiles where the CPU grants them, else AVX-512 VNNI; no setup, on the calling thread when the work is
small) with the same epilogue: the per-channel scale, bias, an optional residual operand, the fused
activation and the requantization to the next layer's uint8 codes. With AMX every such layer takes it; with
VNNI only, those up to :data:`SMALL_MACS` multiply-adds. The choice depends only on the layer, the input
shape and the CPU, so a given input always takes the same kernel. The integer sums are the same as
oneDNN's; the float epilogue may round an output code the other way at an exact tie.

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

__all__ = ["IM2COL_MACS", "IM2COL_MIN_CHANNELS", "SMALL_MACS", "eligible", "small_conv1x1"]

# Without AMX, layers up to this many multiply-adds per call take the C++ VNNI loop. Below it oneDNN's per-call
# setup is a large share of the layer's time; far above it (batch 32 and up) oneDNN's blocked kernels are
# faster. With AMX the C++ tile loop is ahead of oneDNN's at every size this was measured at (batch 1 and 32,
# MobileNetV3 / EfficientNet layer shapes). `torchslim bench vision-speed` measures the effect (BENCHMARKS.md).
SMALL_MACS = 1 << 24


# With AMX, k × k and strided convolutions of 16 input channels and more, up to this many multiply-adds per
# call, run as the 1×1 tile loop on their im2col rows (kh·kw times the input's bytes, so only small calls):
# there oneDNN's call setup dominates. Fewer channels make the row copies too short to pay (a 3-channel stem).
IM2COL_MACS = 1 << 25
IM2COL_MIN_CHANNELS = 16


def _pointwise(conv: Any) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def eligible(conv: Any, x: torch.Tensor) -> bool:
    """Whether ``conv`` (an ``Int8StaticConv2d`` on its oneDNN path) runs on ``x`` through the C++ loop: every
    1×1 stride-1 convolution where the CPU has AMX tiles, and other ungrouped ones (through im2col) of
    :data:`IM2COL_MIN_CHANNELS` input channels and more, up to :data:`IM2COL_MACS` multiply-adds; those 1×1 stride-1 ones up to :data:`SMALL_MACS` where it has
    AVX-512 VNNI only."""
    if conv.groups != 1 or conv.dilation != (1, 1) or x.dim() != 4 or not isinstance(conv.padding[0], int):
        return False
    pointwise = _pointwise(conv)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    pixels = x.shape[0] * ((x.shape[2] + 2 * ph - kh) // sh + 1) * ((x.shape[3] + 2 * pw - kw) // sw + 1)
    macs = pixels * kh * kw * conv.in_channels * conv.out_channels
    if qconv.amx():
        return pointwise or (macs <= IM2COL_MACS and conv.in_channels >= IM2COL_MIN_CHANNELS)
    return pointwise and macs <= SMALL_MACS and qconv.vnni()


_BUFFERS = ("weight", "weight_scale", "bias", "input_scale", "input_zero_point", "output_scale", "output_zero_point")


def _prepared(conv: Any) -> tuple[Any, ...]:
    """The kernel's arguments from ``conv``'s buffers, rebuilt when one changes (as the oneDNN cache is):
    ``(packed weight, wsum, scale, bias, x_scale, x_zp, out_scale, out_zp)`` with uint8-range zero points."""
    bufs = conv._buffers  # the dict itself: nn.Module.__getattr__ costs a microsecond per buffer
    key = tuple((bufs[name].data_ptr(), bufs[name]._version) for name in _BUFFERS)
    cached = getattr(conv, "_qconv", None)
    if cached is None or cached[0] != key:
        packed, wsum = qconv.pack_conv(conv.weight)  # over im2col rows; the 1×1 layout for a 1×1 conv
        x_scale = float(conv.input_scale)
        scale = (conv.weight_scale.float() * x_scale).contiguous()
        out_scale, out_zp = float(conv.output_scale), int(conv.output_zero_point) + 128
        args = (packed, wsum, scale, conv.bias.float().contiguous(), x_scale, int(conv.input_zero_point) + 128)
        cached = (key, (*args, out_scale, out_zp))
        conv._qconv = cached
    return cached[1]


def small_conv1x1(conv: Any, x: torch.Tensor, accum: torch.Tensor | None = None) -> torch.Tensor:
    """``conv`` (an ``Int8StaticConv2d``) on ``x``: uint8 codes in its input qparams, or float32 values that
    the kernel quantizes. Without ``accum``: the conv's activation, uint8 output codes when it hands them on
    (``output_uint8``) else float32. With ``accum`` (the residual add of ``set_accumulate``): the operand's
    uint8 codes are added, then ReLU when ``accumulate_relu``, and the result is uint8 codes."""
    packed, wsum, scale, bias, x_scale, x_zp, out_scale, out_zp = _prepared(conv)
    x = x.contiguous(memory_format=torch.channels_last)
    if x.dtype != torch.uint8:
        x = x.float()
    if not _pointwise(conv):  # k × k or strided: the 1×1 loop over the im2col rows of the codes
        x = qconv.im2col(x, conv.kernel_size, conv.stride, conv.padding, x_zp, x_scale)
    if accum is None:
        act, out_u8, residual = conv.activation, bool(conv.output_uint8), None
    else:
        act, out_u8 = "relu" if conv.accumulate_relu else "none", True
        residual = (accum, float(conv.accum_scale), int(conv.accum_zero_point))
    return qconv.conv1x1(x, packed, wsum, scale, bias, x_zp, act, out_scale, out_zp, out_u8, residual, x_scale=x_scale)
