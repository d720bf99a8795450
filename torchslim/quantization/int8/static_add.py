"""uint8-code residual adds and global average pools for :class:`~torchslim.quantization.int8.static.Int8Static`.

Between two int8 convolutions a residual add (ResNet's ``relu(F(x) + x)``, the inverted residual's
``x + F(x)``) would otherwise dequantize both operands, add in float and let the next convolution quantize
again. :class:`Int8Add` adds the uint8 codes with torch's quantized kernel (``quantized::add`` /
``quantized::add_relu``: each operand rescaled to the output scale, the sum requantized, a ReLU fused), as
torch.ao's and ONNX Runtime's static graphs do (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", arXiv:1712.05877, section 2.4). The global
average pool at a classifier's head reads the codes and dequantizes the pooled means
(:class:`Int8GlobalAvgPool2d`). Qparams are per tensor, zero points in the uint8 range here.

Example:
    >>> import torch
    >>> add = Int8Add(relu=True)
    >>> add.set_qparams((0.1, 10), (0.1, 10), (0.2, 0))
    >>> a = torch.full((1, 2, 2, 2), 30, dtype=torch.uint8); b = torch.full((1, 2, 2, 2), 20, dtype=torch.uint8)
    >>> add(a, b).unique().tolist()  # (30 - 10) * 0.1 + (20 - 10) * 0.1 = 3.0 -> code 15 at scale 0.2
    [15]
"""

from __future__ import annotations

import functools
import platform
import warnings
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.inference import version_key
from torchslim.core.modspec import register_spec_module
from torchslim.kernels import qconv
from torchslim.quantization.int8 import static_small

__all__ = [
    "Int8Add",
    "Int8GlobalAvgPool2d",
    "as_quint8",
    "conv_accumulate",
    "codes_of",
    "dequantize_codes",
    "quantize_codes",
]

QParams = tuple[float, int]


_quantize_warned = False  # whether torch's one deprecation warning of quantize_per_tensor has been absorbed


def quantize_codes(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 codes ``clamp(round(x / scale) + zero_point, 0, 255)``, in ``x``'s memory format.

    On CPU one pass of torch's vectorized ``quantize_per_tensor`` (its codes viewed without a copy); elsewhere
    and under export the same arithmetic in float ops (a code may differ by one at exact ties, where ``x / s``
    and ``x · (1 / s)`` round apart).
    """
    global _quantize_warned
    if x.device.type == "cpu" and not torch.compiler.is_exporting() and not torch.jit.is_scripting():
        if _quantize_warned:  # torch warns once per process: later calls skip catch_warnings (it copies the filters)
            return codes_of(torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8))
        with warnings.catch_warnings():  # see as_quint8
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8)
        _quantize_warned = True
        return codes_of(q)
    return x.float().mul(1.0 / scale).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)


def dequantize_codes(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float32 ``(q - zero_point) · scale``."""
    return q.float().sub_(zero_point).mul_(scale)


class _QParamBuffers(nn.Module):
    """Per-tensor qparams held as float32 / int32 buffers (saved with the model), read back as Python numbers."""

    torchslim_compressed = True

    def _qparam_buffer(self, name: str) -> None:
        self.register_buffer(f"{name}_scale", torch.ones(()))
        self.register_buffer(f"{name}_zero_point", torch.zeros((), dtype=torch.int32))

    def _write(self, name: str, qparams: QParams) -> None:
        getattr(self, f"{name}_scale").fill_(float(qparams[0]))
        getattr(self, f"{name}_zero_point").fill_(int(qparams[1]))

    def _numbers(self, names: tuple[str, ...]) -> tuple[QParams, ...]:
        # Python numbers cached against the buffers' versions: no ``.item()`` per call, never stale after a load.
        bufs = [getattr(self, f"{n}_{k}") for n in names for k in ("scale", "zero_point")]
        key = version_key(bufs)
        cached = self.__dict__.get("_cached")
        if cached is None or cached[0] != key:
            values = tuple((float(bufs[2 * i]), int(bufs[2 * i + 1])) for i in range(len(names)))
            cached = self.__dict__["_cached"] = (key, values)
        return cached[1]


def as_quint8(codes: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """A ``torch.quint8`` view of uint8 ``codes`` (same storage, sizes and strides: no copy), so torch's
    quantized CPU kernels can read them.

    Example:
        >>> q = as_quint8(torch.tensor([3, 5], dtype=torch.uint8), 0.5, 3)
        >>> q.dequantize().tolist(), torch.equal(codes_of(q), q.int_repr())
        ([0.0, 1.0], True)
    """
    # torch 2.13 flags quantized tensors as deprecated; their CPU kernels remain the fast path here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        q = torch._empty_affine_quantized([0], scale=scale, zero_point=zero_point, dtype=torch.quint8)
    return q.set_(codes.untyped_storage(), codes.storage_offset(), codes.size(), codes.stride())


def codes_of(q: torch.Tensor) -> torch.Tensor:
    """The uint8 codes of a ``torch.quint8`` tensor as a view (``int_repr`` copies them)."""
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.size(), q.stride())


def _quantized(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """A quint8 tensor over ``x``'s codes (uint8 input) or over ``x`` quantized (float input)."""
    return as_quint8(x if x.dtype == torch.uint8 else quantize_codes(x, *qparams), *qparams)


@functools.cache
def exact_int8_kernels() -> bool:
    """Whether this CPU's quantized kernels (oneDNN's int8 convolution and linear, used by the static int8
    modules) compute their integer sums exactly.

    On x86 they do with VNNI (``vpdpbusd`` sums uint8 × int8 products in 32 bits). Without it they use
    ``vpmaddubsw``, which adds two uint8 × int8 products into a saturating int16: activation codes near 255
    times weights near ±127 overflow it, and a few outputs come out wrong (the reason for the x86 backend's
    ``reduce_range``). There the static int8 modules take their float reference path, which computes the
    same quantized arithmetic exactly, only slower. Other architectures keep the quantized kernels.

    Example:
        >>> exact_int8_kernels() in (True, False)
        True
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # torch's cpuinfo check (AVX512-VNNI)
    return bool(probe()) if probe is not None else False


@register_spec_module
class Int8Add(_QParamBuffers):
    """``a + b`` (then ReLU when ``relu``) on uint8 codes, requantized to the output qparams.

    Each operand is uint8 codes in its own qparams (``a_*``, ``b_*`` buffers) or float (quantized with them
    first). With ``output_uint8`` the result is uint8 codes for int8 readers, otherwise it is dequantized to
    float32. On CPU the sum is ``torch.ops.quantized.add`` / ``add_relu``; elsewhere (and under export) the
    operands are the float activations of the reference path and are added in float.
    """

    def __init__(self, relu: bool = False, output_uint8: bool = True) -> None:
        super().__init__()
        self.relu, self.output_uint8 = relu, output_uint8
        for name in ("a", "b", "out"):
            self._qparam_buffer(name)

    def set_qparams(self, a: QParams, b: QParams, out: QParams) -> None:
        """``(scale, zero_point)`` of each operand and of the result; zero points in the uint8 range."""
        for name, qp in (("a", a), ("b", b), ("out", out)):
            self._write(name, qp)

    def torchslim_spec(self) -> dict[str, Any]:
        return {"relu": self.relu, "output_uint8": self.output_uint8}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8Add:
        return cls(bool(spec["relu"]), bool(spec["output_uint8"]))

    def _onednn_ok(self, x: torch.Tensor) -> bool:
        # The quantized CPU kernels; the float path elsewhere and under export / scripting (named as the
        # int8 convolutions' switch). Float inputs on a CPU whose int8 convolutions are not exact come from
        # their float reference path, so they stay on it here; codes are added on the kernel (it is exact).
        on_kernels = x.dtype == torch.uint8 or exact_int8_kernels()
        return (
            x.device.type == "cpu" and on_kernels and not torch.compiler.is_exporting() and not torch.jit.is_scripting()
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self._onednn_ok(a):  # the float reference path: float activations, as the int8 convs hand on there
            y = _buffer_float(a, self.a_scale, self.a_zero_point) + _buffer_float(b, self.b_scale, self.b_zero_point)
            return torch.relu(y) if self.relu else y
        qa, qb, out = self._numbers(("a", "b", "out"))
        if a.dtype == torch.uint8 and b.dtype == torch.uint8 and a.stride() != b.stride():
            b = b.contiguous(memory_format=_format_of(a))  # the quantized kernel wants one memory format
        op = torch.ops.quantized.add_relu if self.relu else torch.ops.quantized.add
        y = op(_quantized(a, qa), _quantized(b, qb), out[0], out[1])
        return codes_of(y) if self.output_uint8 else y.dequantize()


def _buffer_float(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``x`` as float; uint8 codes dequantized with tensor qparams (no Python number: traceable by export)."""
    return x.float() if x.dtype != torch.uint8 else (x.float() - zero_point.float()) * scale


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


@register_spec_module
class Int8GlobalAvgPool2d(_QParamBuffers):
    """``nn.AdaptiveAvgPool2d(1)`` that also pools uint8 codes: the mean code per channel, dequantized to float32.

    Averaging the codes in float32 keeps the pooled value unrounded (torch's quantized pool would round it to
    a code); the input is read once, as uint8. Float inputs are pooled as before.

    Example:
        >>> pool = Int8GlobalAvgPool2d(); pool.set_qparams((0.5, 4))
        >>> pool(torch.tensor([[[[4, 6], [8, 10]]]], dtype=torch.uint8)).flatten().tolist()
        [1.5]
    """

    def __init__(self) -> None:
        super().__init__()
        self._qparam_buffer("input")

    def set_qparams(self, qparams: QParams) -> None:
        self._write("input", qparams)

    def torchslim_spec(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8GlobalAvgPool2d:
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return nn.functional.adaptive_avg_pool2d(x, 1)
        ((scale, zp),) = self._numbers(("input",))
        return qconv.avgpool(x, scale, zp)


def conv_accumulate(conv: Any, x: torch.Tensor, accum: torch.Tensor) -> torch.Tensor:
    """``conv(x) + accum`` (then ReLU) for an ``Int8StaticConv2d`` given ``set_accumulate``: the residual add
    fused into the int8 convolution as oneDNN's ``sum`` post-op (``qconv2d_pointwise.binary``, the fusion
    Inductor's x86 int8 lowering makes), requantized to the conv's output qparams (uint8 codes).

    oneDNN accumulates into ``accum``'s buffer, so the rewrite only fuses an operand no later node reads; a
    float operand is quantized first (a fresh buffer). Off oneDNN (other devices, export) the add runs in float
    on the reference path's float activations.
    """
    relu = bool(conv.accumulate_relu)
    if not conv._onednn_ok(x):  # the float reference path (the conv hands floats on there)
        y = conv(x).float() + _buffer_float(accum, conv.accum_scale, conv.accum_zero_point)
        return torch.relu(y) if relu else y
    acc_scale, acc_zp = float(conv.accum_scale), int(conv.accum_zero_point)
    out_scale, out_zp = float(conv.output_scale), int(conv.output_zero_point) + 128
    if accum.dtype != torch.uint8:
        accum = quantize_codes(accum, acc_scale, acc_zp)
    if static_small.eligible(conv, x, accumulate=True):  # small 1×1 layers: torchslim's C++ loop (see static_small)
        return static_small.small_conv1x1(conv, x, accum)
    packed, x_scale, x_zp, _, _, w_zp = conv._cache(
        lambda x_scale, x_zp: torch.ops.onednn.qconv_prepack(
            conv.weight, conv.weight_scale, x_scale, x_zp, *conv._args, conv.groups, None
        )
    )
    qx = conv._quantize_input(x, x_scale, x_zp).contiguous(memory_format=torch.channels_last)
    accum = accum.contiguous(memory_format=torch.channels_last)
    return torch.ops.onednn.qconv2d_pointwise.binary(
        qx, x_scale, x_zp, packed, conv.weight_scale, w_zp, accum, conv.bias, *conv._args, conv.groups,
        out_scale, out_zp, torch.uint8, acc_scale, acc_zp, "sum", 1.0, "relu" if relu else "none", [], "",
    )  # fmt: skip
