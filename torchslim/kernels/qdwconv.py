"""The static int8 depthwise convolution on channels-last uint8 codes: layout, reference, call.

Depthwise convolutions (one k × k filter per channel: MobileNet, Howard et al. 2017, arXiv:1704.04861;
the inverted residual blocks of MobileNetV2/V3 and EfficientNet) are a small share of a network's
multiply-adds but, through oneDNN's int8 call, a large share of its batch-1 time. ``csrc/qdwconv.cpp`` runs
them with AVX-512 VNNI and VBMI, 4 taps of 16 channels per instruction (:func:`fast`), on the calling thread
when the call is small, and
with the epilogue of the 1×1 kernel (:mod:`torchslim.kernels.qconv`): per-channel scale, bias, ReLU /
Hardswish / SiLU and uint8 codes or float32.

Arithmetic, per output pixel and channel ``c`` (``x``: uint8 codes with zero point ``zx``, padding reads
``zx``, i.e. zero in real values; ``w``: symmetric int8 taps): ``acc = Σ_taps (x − zx)·w``, exact in int32,
then ``v = act(acc · scale[c] + bias[c])`` and float32 ``v`` or the codes ``clamp(round(v / so) + zo, 0, 255)``.
:func:`depthwise_reference` computes the same in torch.

Layout (:func:`pack_depthwise`): int8 ``[kh, ⌈kw/4⌉, Cp, 4]`` (``Cp``: channels rounded up to 16; taps past
``kw`` and channels past ``C`` are zero), one 64-byte vector per quad of taps and block of 16 channels, and
``wsum[c] = Σ_taps w`` (int32 ``[Cp]``).

Example:
    >>> import torch
    >>> w = torch.randint(-127, 128, (24, 1, 3, 3), dtype=torch.int8)
    >>> taps, wsum = pack_depthwise(w)
    >>> taps.shape, wsum.shape
    (torch.Size([3, 1, 32, 4]), torch.Size([32]))
    >>> x = torch.randint(0, 256, (1, 24, 5, 5), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    >>> scale, bias = torch.full((24,), 1e-3), torch.zeros(24)
    >>> y = depthwise(x, taps, wsum, scale, bias, 128, (3, 3), (1, 1), (1, 1), act="relu")
    >>> ref = depthwise_reference(x, w, scale, bias, 128, (1, 1), (1, 1), act="relu")
    >>> bool(torch.allclose(y, ref, atol=1e-4))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchslim.kernels.ops import QDWCONV
from torchslim.kernels.qconv import available, epilogue_reference, vbmi

__all__ = ["depthwise", "depthwise_reference", "fast", "pack_depthwise"]


def pack_depthwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[C, 1, kh, kw]`` → taps int8 ``[kh, ⌈kw/4⌉, Cp, 4]`` and ``wsum`` int32 ``[Cp]`` (``Cp = 16·⌈C/16⌉``):
    tap ``(i, j)`` of channel ``c`` at ``[i, j // 4, c, j % 4]``, zero past ``kw`` and past ``C``."""
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"pack_depthwise: expected an int8 [C, 1, kh, kw] weight, got {tuple(weight.shape)}")
    c, _, kh, kw = weight.shape
    quads = -(-kw // 4)
    w = F.pad(weight.to(torch.int8).reshape(c, kh, kw), (0, 4 * quads - kw, 0, 0, 0, -c % 16))  # zero taps add nothing
    taps = w.reshape(w.shape[0], kh, quads, 4).permute(1, 2, 0, 3).contiguous()
    return taps, taps.sum((0, 1, 3), dtype=torch.int32)


def fast() -> bool:
    """Whether :func:`depthwise` runs its AVX-512 VNNI + VBMI loop here (built, and the CPU has both); elsewhere
    the portable loop is exact but slow, so the static int8 modules keep oneDNN's kernel."""
    return vbmi()


def depthwise_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    x_zp: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    act: str = "none",
    out_scale: float = 1.0,
    out_zp: int = 0,
    out_u8: bool = False,
) -> torch.Tensor:
    """:func:`depthwise` in torch from the int8 weight ``[C, 1, kh, kw]``; float64 sums (exact)."""
    acc = F.conv2d(x.double() - x_zp, weight.double(), stride=stride, padding=padding, groups=x.shape[1]).float()
    return epilogue_reference(acc, scale, bias, act, out_scale, out_zp, out_u8)


def depthwise(
    x: torch.Tensor,
    taps: torch.Tensor,
    wsum: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    x_zp: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    *,
    act: str = "none",
    out: tuple[float, int] | None = None,
    x_scale: float = 1.0,
    isa: str = "auto",
) -> torch.Tensor:
    """A depthwise convolution of uint8 codes ``x`` (channels-last ``[N, C, H, W]``, zero point ``x_zp``) with
    :func:`pack_depthwise`'s ``taps`` / ``wsum``: float32 ``act(acc · scale + bias)``, or uint8 codes with
    ``out = (scale, zero_point)``. Float32 ``x`` is quantized first with ``(x_scale, x_zp)``. ``isa``:
    ``"auto"`` (AVX-512 VNNI where the CPU has it), ``"avx512-vnni"`` or ``"portable"``."""
    if not available():
        raise RuntimeError("torchslim's C++ kernels are not built here (see torchslim.kernels.load)")
    out_scale, out_zp = out if out is not None else (1.0, 0)
    return QDWCONV(
        x, float(x_scale), int(x_zp), taps, wsum, scale, bias, list(kernel), list(stride), list(padding), act,
        float(out_scale), int(out_zp), out is not None, isa,
    )  # fmt: skip
