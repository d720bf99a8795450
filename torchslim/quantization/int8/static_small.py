"""Static int8 convolutions (1×1, k × k on im2col rows, depthwise) through torchslim's own C++ loops instead
of oneDNN.

A oneDNN int8 convolution call pays a fixed setup (primitive lookup, scales and zero points wrapped as
memory objects, output reorders) that at batch 1 outweighs the arithmetic of small layers: the
squeeze-and-excite convolutions on 1 × 1 maps, and the 1×1 layers of the last stages of MobileNet /
EfficientNet. :func:`small_conv1x1` runs a 1×1 stride-1 layer through :func:`torchslim.kernels.qconv.conv1x1`
(AMX tiles where the CPU grants them, else AVX-512 VNNI; no setup, on the calling thread when the work is
small) with the same epilogue: the per-channel scale, bias, an optional residual operand, the fused
activation and the requantization to the next layer's uint8 codes. Each layer's packed weight and
constants are bound once in a C++ plan (``csrc/qplan.cpp``) that Python calls with the input alone. With
AMX every such layer takes it; with VNNI only, those up to :data:`SMALL_MACS` multiply-adds. The choice depends only on the layer, the input
shape and the CPU, so a given input always takes the same kernel. Small depthwise calls (:func:`depthwise`, up to
:data:`DEPTHWISE_MACS` multiply-adds and :data:`DEPTHWISE_BYTES` of input) run :mod:`torchslim.kernels.qdwconv`'s loop
with the same epilogue where the CPU has AVX-512 VNNI and VBMI, except those with a fused residual sum. The integer sums are the same as
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

from torchslim.kernels import qconv, qdwconv
from torchslim.kernels.ops import qconv_plan, qdwconv_plan

__all__ = [
    "IM2COL_FEW_CHANNELS_MACS",
    "IM2COL_MACS",
    "IM2COL_ROW_BYTES_PER_THREAD",
    "IM2COL_MIN_CHANNELS",
    "DEPTHWISE_BYTES",
    "DEPTHWISE_MACS",
    "SMALL_MACS",
    "STEM_CHANNELS",
    "STEM_MACS",
    "depthwise",
    "eligible",
    "image_codes",
    "linear_eligible",
    "small_conv1x1",
    "small_linear",
    "stem_im2col",
]

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
# Larger such calls take it too while their im2col rows come to at most this many bytes per thread (the rows of
# a thread's share then stay in its L2 cache, 2 MB per core on the AMX CPUs measured): ResNet-18's 3 × 3 layers
# at batch 1 (58 M to 116 M multiply-adds, 0.2 to 1.8 MB of rows) ran faster on the tile loop than on oneDNN at
# 2 threads, and at 1 thread all but the 64-channel 56 × 56 ones (1.8 MB); per layer, interleaved. Batch 32
# (tens of MB of rows) stays on oneDNN.
IM2COL_ROW_BYTES_PER_THREAD = 1 << 20
# Fewer input channels take im2col only up to this many multiply-adds per call, unless the stem path below
# applies: a small first layer (digits' 1-channel 3×3 at batch 64, 1.2 M) runs its whole model faster off
# oneDNN (`torchslim bench digits`); through the byte-by-byte unfold (uint8 codes, or a CPU without VBMI) a
# 224 × 224 stem (10.8 M at batch 1) was slower there.
IM2COL_FEW_CHANNELS_MACS = 1 << 21
# A float32 image of up to STEM_CHANNELS channels (a network's stem) is quantized and unfolded in one pass where
# the CPU has VBMI (kernel rows of up to 64 bytes): with AMX such layers take the tile loop up to STEM_MACS
# multiply-adds per call. Measured per layer against oneDNN, interleaved, 224 × 224: the 3 × 3 stems of
# EfficientNet-B0 and MobileNetV3-Large at batch 1 and 32 and ResNet-18's 7 × 7 one at batch 1 ran faster on the
# tile loop, ResNet-18's at batch 32 (3.8 G multiply-adds, 59 MB of im2col rows) on oneDNN.
STEM_CHANNELS = 4
STEM_MACS = 1 << 29
# Depthwise layers up to this many multiply-adds and input bytes per call take torchslim's VNNI + VBMI loop: there
# (batch 1 on MobileNet / EfficientNet maps) oneDNN's call setup outweighs the difference in the loops. Larger
# calls (batch 32) ran faster on oneDNN's blocked depthwise kernel, and so did stride-2 layers on 112 × 112 maps
# of 64 and 96 channels (800 KB and more of input, which the loop first copies into its padded, blocked layout):
# per-layer timings of EfficientNet-B0's and MobileNetV3-Large's depthwise shapes, interleaved; the model-level
# effect is measured by `torchslim bench vision-speed`.
DEPTHWISE_MACS = 1 << 23
DEPTHWISE_BYTES = 1 << 19


def _pointwise(conv: Any) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def _macs(conv: Any, x: torch.Tensor) -> int:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    n, _, h, w = x.shape
    pixels = n * ((h + 2 * ph - kh) // sh + 1) * ((w + 2 * pw - kw) // sw + 1)
    return pixels * kh * kw * conv.in_channels // conv.groups * conv.out_channels


def depthwise(conv: Any) -> bool:
    """Whether ``conv`` is a depthwise convolution (one filter per channel) that :mod:`torchslim.kernels.qdwconv`
    runs: ``groups == in_channels == out_channels``, no dilation, numeric padding."""
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and conv.groups > 1
        and conv.dilation == (1, 1)
        and isinstance(conv.padding[0], int)
    )


def stem_im2col(conv: Any) -> bool:
    """Whether :func:`torchslim.kernels.qconv.im2col` unfolds ``conv``'s float32 input in its one-pass few-channel
    path: up to :data:`STEM_CHANNELS` input channels, kernel rows of up to 64 bytes."""
    return conv.in_channels <= STEM_CHANNELS and conv.kernel_size[1] * conv.in_channels <= 64


def image_codes(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor | None:
    """uint8 codes ``clamp(round(x / scale) + zero_point, 0, 255)`` of a contiguous float32 image of up to
    :data:`STEM_CHANNELS` channels, channels-last, in one pass (``qim2col``'s 1 × 1 unfold) where the CPU has
    AVX-512 VBMI; None elsewhere (the caller quantizes, then converts the layout: two passes over the image)."""
    if x.dtype != torch.float32 or x.dim() != 4 or x.shape[1] > STEM_CHANNELS or not x.is_contiguous():
        return None
    if not qconv.vbmi():
        return None
    return qconv.im2col(x, (1, 1), (1, 1), (0, 0), zero_point, scale)


def eligible(conv: Any, x: torch.Tensor, accumulate: bool = False) -> bool:
    """Whether ``conv`` (an ``Int8StaticConv2d`` on its oneDNN path) runs on ``x`` through the C++ loops.

    - Where the CPU has AMX tiles: every 1×1 stride-1 convolution; other ungrouped ones through im2col, of
      :data:`IM2COL_MIN_CHANNELS` input channels and more up to :data:`IM2COL_MACS` multiply-adds or
      :data:`IM2COL_ROW_BYTES_PER_THREAD` bytes of im2col rows per thread, a stem's
      contiguous (NCHW) float image (:func:`stem_im2col`, with VBMI) up to :data:`STEM_MACS`, other inputs of
      fewer channels up to :data:`IM2COL_FEW_CHANNELS_MACS`.
    - Where it has AVX-512 VNNI only: 1×1 stride-1 ones up to :data:`SMALL_MACS`.
    - Depthwise ones (:func:`depthwise`) where it has AVX-512 VNNI and VBMI
      (:func:`torchslim.kernels.qdwconv.fast`), up to :data:`DEPTHWISE_MACS` multiply-adds and
      :data:`DEPTHWISE_BYTES` input elements (the codes the loop copies), unless a residual operand is added
      (``accumulate``: oneDNN's fused sum)."""
    if x.dim() != 4:
        return False
    if conv.groups != 1:
        if accumulate or not depthwise(conv) or not qdwconv.fast():
            return False
        return x.numel() <= DEPTHWISE_BYTES and _macs(conv, x) <= DEPTHWISE_MACS
    if conv.dilation != (1, 1) or not isinstance(conv.padding[0], int):
        return False
    pointwise = _pointwise(conv)
    if pointwise and qconv.amx():  # the common case first: no arithmetic on the shape
        return True
    macs = _macs(conv, x)
    if qconv.amx():
        if x.is_floating_point() and x.is_contiguous() and stem_im2col(conv) and qconv.vbmi():  # an NCHW image
            return macs <= STEM_MACS
        if conv.in_channels < IM2COL_MIN_CHANNELS:
            return macs <= IM2COL_FEW_CHANNELS_MACS
        if macs <= IM2COL_MACS:
            return True
        rows = macs // conv.out_channels  # bytes of im2col rows: pixels · kh · kw · in_channels
        return rows <= IM2COL_ROW_BYTES_PER_THREAD * torch.get_num_threads()
    return pointwise and macs <= SMALL_MACS and qconv.vnni()


class _Plan:
    """A layer's cached ``QConvPlan`` and the key it was built for. Copies and pickles of the module carry an
    empty one (the plan is a C++ object bound to this process), which the next call rebuilds."""

    __slots__ = ("key", "plan", "tensors")

    def __init__(self, key: tuple[Any, ...] = (), plan: Any = None, tensors: tuple[torch.Tensor, ...] = ()) -> None:
        self.key, self.plan, self.tensors = key, plan, tensors

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Plan, ())


def _prepared(conv: Any) -> Any:
    """``conv``'s ``QConvPlan`` (:func:`torchslim.kernels.ops.qconv_plan`: the packed weight, ``wsum``, the
    per-channel scale, bias and qparams bound once), rebuilt when a buffer is replaced (``.to()``, assignment)
    or written in place (``load_state_dict``, ``copy_``: the tensor's version counter moves), or the fused
    activation or output dtype is set anew (the residual and gate rewrites do), as the oneDNN cache is. The
    cache holds the buffers themselves, so their ids stay theirs while it is compared. Buffers made under
    ``torch.inference_mode`` have no version counter: there only a replaced buffer rebuilds the plan."""
    b = conv._buffers  # the dict itself: nn.Module.__getattr__ costs a microsecond per buffer
    t = (b["weight"], b["weight_scale"], b["bias"], b["input_scale"], b["input_zero_point"], b["output_scale"],
         b["output_zero_point"])  # fmt: skip
    try:
        version = sum((t[0]._version, t[1]._version, t[2]._version, t[3]._version, t[4]._version, t[5]._version,
                       t[6]._version))  # fmt: skip
    except RuntimeError:  # inference tensors (made under torch.inference_mode) keep no version counter
        version = -1
    key = (id(t[0]), id(t[1]), id(t[2]), id(t[3]), id(t[4]), id(t[5]), id(t[6]), version, conv.activation,
           conv.output_uint8)  # fmt: skip
    cached = conv.__dict__.get("_qconv")
    if cached is None or cached.key != key:
        # Both plans bind the same constants after their packed weight: the depthwise layer's quads of taps, or the
        # 1×1 layout over im2col rows (the plain 1×1 layout for a 1×1 conv or a Linear's [N, K] weight).
        linear = t[0].dim() == 2
        if not linear and depthwise(conv):
            (weights, wsum), make = qdwconv.pack_depthwise(conv.weight), qdwconv_plan
        else:
            (weights, wsum), make = qconv.pack_conv(t[0][:, :, None, None] if linear else t[0]), qconv_plan
        window = ([1, 1], [1, 1], [0, 0]) if linear else (conv.kernel_size, conv.stride, conv.padding)
        x_scale = float(conv.input_scale)
        scale = (conv.weight_scale.float() * x_scale).contiguous()
        out_scale, out_zp = float(conv.output_scale), int(conv.output_zero_point) + 128
        plan = make(
            weights, wsum, scale, conv.bias.float().contiguous(), x_scale, int(conv.input_zero_point) + 128,
            conv.activation, out_scale, out_zp, bool(conv.output_uint8), *(list(w) for w in window),
        )  # fmt: skip
        cached = _Plan(key, plan, t)
        conv.__dict__["_qconv"] = cached
    return cached.plan


def small_conv1x1(conv: Any, x: torch.Tensor, accum: torch.Tensor | None = None) -> torch.Tensor:
    """``conv`` (an ``Int8StaticConv2d``) on ``x``: uint8 codes in its input qparams, or float32 values that
    the kernel quantizes; a k × k or strided layer on the :func:`torchslim.kernels.qconv.im2col` rows.
    Without ``accum``: the conv's activation, uint8 output codes when it hands them on (``output_uint8``) else
    float32. With ``accum`` (the residual add of ``set_accumulate``): the operand's uint8 codes are added, then
    ReLU when ``accumulate_relu``, and the result is uint8 codes.

    The layer's plan calls ``torchslim::qim2col`` / ``torchslim::qconv1x1`` through the C++ dispatcher (dispatch
    modes see them) without torch.ops' per-argument parsing in Python."""
    plan = _prepared(conv)
    if accum is None:
        return plan(x)
    return plan.accumulate(x, accum, float(conv.accum_scale), int(conv.accum_zero_point), bool(conv.accumulate_relu))


def linear_eligible(linear: Any, x: torch.Tensor) -> bool:
    """Whether ``linear`` (an ``Int8StaticLinear`` on its oneDNN path) runs on the float32 rows ``x`` through the
    1×1 loop (:func:`small_linear`): float32 in and out, contiguous rows, and where the CPU has AMX tiles, else
    AVX-512 VNNI up to :data:`SMALL_MACS` multiply-adds. With AMX the loop was faster than ``torch._int_mm``
    and the torch ops that quantize and rescale around it at every row count measured, 1 to 4096 (per layer,
    interleaved; the figures are in the commit message of 7bd2b44)."""
    if x.dtype != torch.float32 or linear.output_dtype != torch.float32 or not x.is_contiguous() or x.dim() < 2:
        return False
    if qconv.amx():
        return True
    return qconv.vnni() and x.numel() // x.shape[-1] * linear.in_features * linear.out_features <= SMALL_MACS


def small_linear(linear: Any, x: torch.Tensor) -> torch.Tensor:
    """``linear`` (an ``Int8StaticLinear``) on contiguous float32 rows ``x`` ``[..., K]``: the rows are a
    ``[M, K, 1, 1]`` channels-last map (the same bytes) for the layer's 1×1 plan, which quantizes them with the
    input qparams and returns float32 ``[..., N]`` after the fused activation."""
    rows = x.view(-1, x.shape[-1])
    y = _prepared(linear)(rows.view(rows.shape[0], rows.shape[1], 1, 1))
    return y.view(*x.shape[:-1], linear.out_features)
