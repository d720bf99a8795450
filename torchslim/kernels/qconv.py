"""The static int8 1×1 convolution on channels-last uint8 codes: layout, reference, call.

The 1×1 convolution is an int8 GEMM over the pixels. At batch 1 the 1×1 layers of MobileNet / EfficientNet
blocks (Sandler et al. 2018, arXiv:1801.04381; Tan & Le 2019, arXiv:1905.11946), squeeze-and-excite
convolutions on 1 × 1 maps above all (Hu et al. 2018, arXiv:1709.01507), are less work than the setup of a
oneDNN int8 convolution call. The C++ loop of ``csrc/qconv.cpp`` has no setup, stays on the calling thread
when the work is small, and fuses the epilogue oneDNN does: per-channel scale, bias, an optional residual
operand, ReLU / Hardswish / SiLU, and the requantization to the next layer's uint8 codes.

Arithmetic, per output pixel ``m`` and channel ``n`` (``x``: uint8 codes with zero point ``zx``; ``w``:
symmetric int8 weights; ``scale[n]`` = input scale × the channel's weight scale):
``v = act(Σ_k (x − zx)·w · scale[n] + bias[n] [+ (a − za)·sa])``, then either float32 ``v`` or the codes
``clamp(round(v / so) + zo, 0, 255)``. The sums are exact; :func:`conv1x1_reference` computes the same in
torch.

Layout (:func:`pack_conv1x1`): for each block of 16 output channels and each quad of 4 input channels,
64 bytes ``[16 channels][4 inputs]``, the operand of one AVX-512 VNNI ``vpdpbusd`` (four uint8 × int8
products per int32 lane) against four input bytes broadcast to every lane; the inputs zero-padded to a
multiple of 64, so that 16 consecutive quads are also one AMX tile in the layout ``tdpbusd`` reads; plus
``wsum[n] = Σ_k w[n, k]``, which turns the unsigned-times-signed sum into the zero-pointed one.

Paths: on CPUs with AMX-INT8 (Sapphire Rapids and later, where Linux grants the tile registers), calls of
16 pixels and more run on tiles, 32 pixels × 32 channels per step (Intel 64 and IA-32 Architectures
Optimization Reference Manual, ch. 20, "Intel AMX"); otherwise AVX-512 VNNI. CPUs with neither run a
portable C++ loop with the same sums (exact, not fast).

Example:
    >>> import torch
    >>> w = torch.randint(-127, 128, (24, 40, 1, 1), dtype=torch.int8)
    >>> packed, wsum = pack_conv1x1(w)
    >>> packed.shape, bool((wsum == w.sum((1, 2, 3), dtype=torch.int32)).all())
    (torch.Size([2, 16, 16, 4]), True)
    >>> bool((unpack_conv1x1(packed, 24, 40) == w).all())
    True
    >>> x = torch.randint(0, 256, (1, 40, 3, 3), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    >>> scale, bias = torch.full((24,), 1e-3), torch.zeros(24)
    >>> y = conv1x1(x, packed, wsum, scale, bias, x_zp=128, act="relu")
    >>> bool(torch.allclose(y, conv1x1_reference(x, w, scale, bias, 128, "relu"), atol=1e-4))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchslim.kernels.ops import QAVGPOOL, QCONV1X1, QIM2COL, QMAXPOOL, QSCALE_QUANTIZE, load, qconv_amx
from torchslim.kernels.ops import vbmi as ops_vbmi

__all__ = [
    "amx",
    "available",
    "avgpool",
    "conv1x1",
    "conv1x1_reference",
    "epilogue_reference",
    "im2col",
    "maxpool",
    "pack_conv",
    "pack_conv1x1",
    "scale_quantize",
    "unpack_conv1x1",
    "vbmi",
    "vnni",
]

ACTIVATIONS = ("none", "relu", "hardswish", "swish")
ISAS = ("auto", "amx", "avx512-vnni", "portable")


def available() -> bool:
    """Whether the C++ convolutions are built (compiles them at the first call); without them callers keep
    oneDNN's int8 convolution."""
    return load() != "torch-reference"


def vnni() -> bool:
    """Whether the convolutions run their AVX-512 VNNI path here (built, and the CPU has it); elsewhere the
    portable loop is exact but slow, so callers keep oneDNN's kernels."""
    return load() == "avx512-vnni"  # the W4A8 kernel in the same library checks the same four CPU flags


def vbmi() -> bool:
    """Whether the depthwise loop and the few-channel :func:`im2col` run their AVX-512 VNNI + VBMI paths here
    (built, and the CPU has both)."""
    return vnni() and ops_vbmi()


def amx() -> bool:
    """Whether calls of 16 pixels and more run on AMX tiles here (built, the CPU has AMX-INT8 and the kernel
    grants the tiles to this process)."""
    return vnni() and qconv_amx()


def pack_conv1x1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[N, K, 1, 1]`` (or ``[N, K]``) → the VNNI / AMX layout ``[⌈N/16⌉, 16·⌈K/64⌉, 16, 4]`` and
    ``wsum`` (int32 ``[N]``)."""
    w = weight.reshape(weight.shape[0], -1).to(torch.int8)
    n, k = w.shape
    padded = F.pad(w, (0, -k % 64, 0, -n % 16))  # zeros: padded products add nothing
    packed = padded.reshape(padded.shape[0] // 16, 16, padded.shape[1] // 4, 4).permute(0, 2, 1, 3).contiguous()
    return packed, w.sum(1, dtype=torch.int32)


def pack_conv(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[N, C, kh, kw]`` → :func:`pack_conv1x1`'s layout over the :func:`im2col` rows: the inputs in
    ``(i, j, c)`` order, ``K = kh·kw·C``."""
    return pack_conv1x1(weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1))


def im2col(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    zero_point: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """uint8 codes ``x`` (channels-last ``[N, C, H, W]``) unfolded to ``[N, kh·kw·C, OH, OW]`` channels-last,
    so that a k × k or strided convolution with :func:`pack_conv`'s weight is :func:`conv1x1` on the result;
    taps outside the image read ``zero_point`` (zero padding in real values). Float32 values ``x`` are
    quantized first with ``(scale, zero_point)``; those may also be contiguous (NCHW): an image of up to 4
    channels, a network's stem, is then quantized and unfolded in one pass where the CPU has AVX-512 VBMI.

    Example:
        >>> x = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 2, 2).contiguous(memory_format=torch.channels_last)
        >>> im2col(x, (2, 2), (1, 1), (1, 1), 9)[0, :, 0, 0].tolist()  # the window at (-1, -1): 3 padded taps
        [9, 9, 9, 0]
    """
    if not available():
        raise RuntimeError("torchslim's C++ kernels are not built here (see torchslim.kernels.load)")
    return QIM2COL(x, list(kernel), list(stride), list(padding), int(zero_point), float(scale))


def unpack_conv1x1(packed: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """The exact inverse of :func:`pack_conv1x1`'s layout: int8 ``[N, K, 1, 1]``."""
    blocks, quads = packed.shape[:2]
    w = packed.permute(0, 2, 1, 3).reshape(blocks * 16, quads * 4)
    return w[:out_channels, :in_channels].reshape(out_channels, in_channels, 1, 1)


def epilogue_reference(
    acc: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    act: str,
    out_scale: float,
    out_zp: int,
    out_u8: bool,
    accum: tuple[torch.Tensor, float, int] | None = None,
) -> torch.Tensor:
    """The kernels' epilogue in torch on exact sums ``acc`` ``[N, C, H, W]``: scale, bias, residual, activation,
    then float32 or uint8 codes, channels-last."""
    v = acc * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    if accum is not None:
        codes, a_scale, a_zp = accum
        v = v + (codes.float() - a_zp) * a_scale
    v = {"none": lambda t: t, "relu": torch.relu, "hardswish": F.hardswish, "swish": F.silu}[act](v)
    if not out_u8:
        return v.contiguous(memory_format=torch.channels_last)
    q = torch.round(v * (1.0 / out_scale)) + out_zp
    return q.clamp(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)


def conv1x1_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    x_zp: int,
    act: str = "none",
    out_scale: float = 1.0,
    out_zp: int = 0,
    out_u8: bool = False,
    accum: tuple[torch.Tensor, float, int] | None = None,
    x_scale: float = 1.0,
) -> torch.Tensor:
    """:func:`conv1x1` in torch, from the int8 weight ``[N, K, 1, 1]``; float64 sums (exact)."""
    if x.dtype != torch.uint8:
        x = torch.round(x.float() * (1.0 / x_scale)).add_(x_zp).clamp_(0, 255)
    acc = F.conv2d(x.double() - x_zp, weight.double()).float()
    return epilogue_reference(acc, scale, bias, act, out_scale, out_zp, out_u8, accum)


def conv1x1(
    x: torch.Tensor,
    packed: torch.Tensor,
    wsum: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    x_zp: int,
    act: str = "none",
    out_scale: float = 1.0,
    out_zp: int = 0,
    out_u8: bool = False,
    accum: tuple[torch.Tensor, float, int] | None = None,
    *,
    x_scale: float = 1.0,
    isa: str = "auto",
) -> torch.Tensor:
    """A 1×1, stride-1 convolution of uint8 codes ``x`` (channels-last ``[B, K, H, W]``) with a packed weight.

    Args:
        x: uint8 codes, channels-last; or float32 values, quantized inside with ``(x_scale, x_zp)`` as
            ``clamp(round(x / x_scale) + x_zp, 0, 255)``.
        packed, wsum: from :func:`pack_conv1x1`.
        scale: float32 ``[N]``, input scale × weight scale per output channel.
        bias: float32 ``[N]``.
        x_zp: the input codes' zero point (0..255).
        x_scale: the input scale (read only for float32 ``x``).
        act: ``"none"``, ``"relu"``, ``"hardswish"`` or ``"swish"`` (SiLU).
        out_scale, out_zp, out_u8: with ``out_u8`` the output is uint8 codes with these qparams, else float32.
        accum: optional residual operand ``(codes, scale, zero_point)`` added before the activation.
        isa: ``"auto"`` (AMX for 16 pixels and more where granted, else AVX-512 VNNI, else portable),
            ``"amx"``, ``"avx512-vnni"`` (each an error where the CPU lacks it) or ``"portable"``.

    Raises:
        ValueError: an unknown ``act`` or ``isa``.
        RuntimeError: the kernels are not built (see :func:`available`), or shapes / dtypes that do not match.

    Returns:
        Channels-last ``[B, N, H, W]``, uint8 or float32.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}, got {isa!r}")
    if not available():
        raise RuntimeError("torchslim's C++ kernels are not built here (see torchslim.kernels.load)")
    codes, a_scale, a_zp = accum if accum is not None else (None, 1.0, 0)
    out_channels = wsum.shape[0]
    return QCONV1X1(
        x,
        x_scale,
        x_zp,
        packed,
        wsum,
        scale,
        bias,
        out_channels,
        act,
        out_scale,
        out_zp,
        out_u8,
        codes,
        a_scale,
        a_zp,
        isa,
    )


def scale_quantize(
    x: torch.Tensor, mult: torch.Tensor, scale: float, zero_point: int, x_qparams: tuple[float, int] = (1.0, 0)
) -> torch.Tensor:
    """uint8 codes ``clamp(round((x · mult) / scale) + zero_point, 0, 255)`` of ``x`` ``[N, C, H, W]`` times
    ``mult`` ``[N, C, 1, 1]`` (a squeeze-and-excite gate), in one pass and in ``x``'s memory format
    (channels-last or contiguous); the same codes as ``torch.quantize_per_tensor(x * mult, ...)``, whose float
    product this never writes to memory. ``x`` is float32, or uint8 codes read as ``(x − zx) · sx`` with
    ``x_qparams = (sx, zx)``. Without the C++ build: exactly that, in torch.

    Example:
        >>> x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # [1, 2, 1, 2]
        >>> scale_quantize(x, torch.tensor([0.5, 2.0]).view(1, 2, 1, 1), 0.25, 10).flatten().tolist()
        [12, 14, 34, 42]
    """
    x_scale, x_zp = x_qparams
    if not available():  # torch's quantize_per_tensor also multiplies by 1 / scale and rounds half to even
        values = x if x.dtype != torch.uint8 else (x.float() - x_zp) * x_scale
        return (values * mult).mul_(1.0 / scale).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)
    x = x if x.dtype == torch.uint8 else x.float()
    return QSCALE_QUANTIZE(x, mult.float().contiguous(), float(scale), int(zero_point), float(x_scale), int(x_zp))


def avgpool(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The global average pool of uint8 codes ``x`` ``[N, C, H, W]`` dequantized to float32 ``[N, C, 1, 1]``:
    ``(mean code − zero_point) · scale``, the codes read once as bytes (exact int32 sums) by the C++ kernel for
    channels-last ``x`` where it is built; otherwise torch's mean over the codes in float32.

    Example:
        >>> x = torch.tensor([[[[4, 6], [8, 10]]]], dtype=torch.uint8)
        >>> avgpool(x.contiguous(memory_format=torch.channels_last), 0.5, 4).flatten().tolist()
        [1.5]
    """
    if available() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return QAVGPOOL(x, float(scale), int(zero_point))
    return x.mean(dim=(-2, -1), keepdim=True, dtype=torch.float32).sub_(zero_point).mul_(scale)


def maxpool(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """The max-pool of uint8 codes ``x`` ``[N, C, H, W]`` (dilation 1, floor mode, padding at most half the
    kernel, as torch allows), exact: by the C++ kernel over the threads for channels-last ``x`` where it is
    built, otherwise in float32 (exact for 0..255).

    Example:
        >>> x = torch.tensor([[[[1, 9], [3, 4]]]], dtype=torch.uint8)
        >>> maxpool(x.contiguous(memory_format=torch.channels_last), (2, 2), (2, 2), (0, 0)).flatten().tolist()
        [9]
    """
    if available() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return QMAXPOOL(x, list(kernel), list(stride), list(padding))
    return F.max_pool2d(x.float(), kernel, stride, padding).to(torch.uint8)
