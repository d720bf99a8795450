"""Export-only stand-ins for ``Int4WeightOnlyLinear``: what ONNX and ``torch.export`` trace instead of it.

The eager module picks its kernel per call and caches a packed layout keyed on the buffers' data
pointers, which fake tensors do not have: traced as is, every module logs "int4 kernel failed" and
falls back (and turns its kernel off for good). :func:`int4_lowered` swaps each one, for the duration
of an export, for a module whose forward is a single traceable path:

- ``"onnx"``: ONNX Runtime's ``com.microsoft::MatMulNBits`` (4-bit blocks packed two per byte, low
  nibble first; ``(q − zp) · scale`` with float zero points ``zp = 8 − zero / scale``, which is exactly
  our ``(q − 8) · scale + zero``), so the file keeps 4-bit weights and ONNX Runtime's CPU kernel runs them;
- ``"pt2"``: torch's int4 kernel (``aten._weight_int4pack_mm_for_cpu`` / ``_weight_int4pack_mm``) on
  the layout packed once before tracing, the arithmetic of the eager module; shapes the kernel does not
  take (or ``kernel=False``) trace the dequantize-then-``linear`` reference.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.quantization.int4.modules import Int4WeightOnlyLinear
    >>> m = nn.Sequential(Int4WeightOnlyLinear.from_float(nn.Linear(64, 16), group_size=32))
    >>> with int4_lowered(m, "pt2") as n:
    ...     type(m[0]).__name__, n
    ('Int4KernelLinear', 1)
    >>> type(m[0]).__name__
    'Int4WeightOnlyLinear'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.quantization.int4.modules import Int4WeightOnlyLinear, int4_kernel_supported
from torchslim.quantization.int4.primitives import dequantize_packed_int4, unpack_int4

__all__ = ["Int4KernelLinear", "Int4MatMulNBits", "int4_lowered"]


class _Int4Export(nn.Module):
    """Shared part: the optional AWQ input scale before the product and the bias after it."""

    input_scale: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, src: Int4WeightOnlyLinear) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = src.in_features, src.out_features, src.group_size
        self.register_buffer("input_scale", None if src.input_scale is None else src.input_scale.detach().float())
        self.register_buffer("bias", None if src.bias is None else src.bias.detach().float())

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.input_scale is not None:
            x2 = x2 * self.input_scale.to(x.dtype)
        y = self.product(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


class Int4MatMulNBits(_Int4Export):
    """ONNX export of an int4 linear as one ``com.microsoft::MatMulNBits`` node (4-bit weights in the file).

    Buffers: ``blocks`` ``[N, K/g, g/2]`` uint8 (column ``2i`` in the low nibble), ``scales`` and
    ``zero_points`` ``[N, K/g]`` float32. Outside an ONNX export, the same arithmetic in torch.
    """

    def __init__(self, src: Int4WeightOnlyLinear) -> None:
        super().__init__(src)
        n, k, g = src.out_features, src.in_features, src.group_size
        codes = unpack_int4(src.weight)  # [N, K], 0..15
        blocks = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, k // g, g // 2)
        scales, zeros = src.scales.detach().float(), src.zeros.detach().float()
        self.register_buffer("blocks", blocks.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("zero_points", (8.0 - zeros / scales).contiguous())

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(
                "com.microsoft::MatMulNBits",
                (x2, self.blocks, self.scales.to(x2.dtype), self.zero_points.to(x2.dtype)),
                {"K": self.in_features, "N": self.out_features, "bits": 4, "block_size": self.group_size},
                dtype=x2.dtype,
                shape=(x2.shape[0], self.out_features),
                version=1,
            )
        codes = torch.stack([self.blocks & 0xF, self.blocks >> 4], dim=-1).reshape(self.out_features, -1)
        g = self.group_size
        w = (codes.float() - self.zero_points.repeat_interleave(g, 1)) * self.scales.repeat_interleave(g, 1)
        return F.linear(x2, w.to(x2.dtype))


class Int4KernelLinear(_Int4Export):
    """``torch.export`` of an int4 linear: torch's int4 kernel on the layout packed before tracing.

    Shapes the kernel does not take, or a source with ``kernel=False``, trace the dequantize path.
    """

    def __init__(self, src: Int4WeightOnlyLinear) -> None:
        super().__init__(src)
        device = src.weight.device
        self.kernel = src.kernel and int4_kernel_supported(
            device.type, src.in_features, src.out_features, src.group_size
        )
        if self.kernel:
            packed, sz = src._kernel_tensors(device)  # the eager module's own packing, computed on real tensors
            self.register_buffer("packed", packed)
            self.register_buffer("scales_zeros", sz)
            self.mm = (
                torch.ops.aten._weight_int4pack_mm_for_cpu
                if device.type == "cpu"
                else torch.ops.aten._weight_int4pack_mm
            )
        else:
            self.register_buffer("weight", src.weight.detach())
            self.register_buffer("scales", src.scales.detach())
            self.register_buffer("zeros", src.zeros.detach())

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel and x2.is_floating_point():
            y = self.mm(x2.to(torch.bfloat16).contiguous(), self.packed, self.group_size, self.scales_zeros)
            return y.to(x2.dtype)
        w = dequantize_packed_int4(self.weight, self.scales, self.zeros, self.group_size, x2.dtype)
        return F.linear(x2, w)


_TARGETS: dict[str, type[_Int4Export]] = {"onnx": Int4MatMulNBits, "pt2": Int4KernelLinear}


@contextmanager
def int4_lowered(model: nn.Module, target: Literal["onnx", "pt2"]) -> Iterator[int]:
    """Swap every ``Int4WeightOnlyLinear`` in ``model`` for its ``target`` stand-in; restore on exit.

    Yields the number of modules swapped. A module reachable under several names (shared) gets one
    stand-in, so the sharing survives the export.
    """
    stand_ins: dict[int, nn.Module] = {}
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Int4WeightOnlyLinear):
                    if id(child) not in stand_ins:
                        stand_ins[id(child)] = _TARGETS[target](child)
                    setattr(parent, name, stand_ins[id(child)])
                    swapped.append((parent, name, child))
        yield len(stand_ins)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
