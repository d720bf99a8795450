"""``Int4WeightOnlyLinear``: group-wise int4 weights packed two per byte, float activations (W4A16).

Stored buffers (device-independent, what ``state_dict`` / safetensors hold):

- ``weight`` ``[N, K/2]`` uint8: codes 0..15, column ``2i`` in the high nibble (see :mod:`~torchslim.quantization.int4.primitives`);
- ``scales``, ``zeros`` ``[N, K/g]`` bf16: ``ŵ = (q − 8) · scale + zero`` per (row, group);
- ``bias`` ``[N]`` float32 or absent; ``input_scale`` ``[K]`` float32 or absent (AWQ's ``1/s``).

Kernels (the torch 2.13 signatures): on CPU ``aten._convert_weight_to_int4pack_for_cpu``
takes the *unpacked* codes as int32 ``[N, K]`` and ``aten._weight_int4pack_mm_for_cpu(x, w, g, sz)``
takes ``sz`` ``[K/g, N, 2]`` = (scale, zero) with exactly the convention above; it needs
``N % 16 == 0`` and g ∈ {32, 64, 128, 256}; float32 activations take a much slower path there, so
they are cast to bf16 and the result back. From ``DEQUANT_MIN_ROWS`` rows (tokens) on, the product is
compute-bound and a bf16 GEMM on the weight dequantized once per call is faster than the kernel. On CUDA ``aten._convert_weight_to_int4pack`` takes the
packed uint8 ``[N, K/2]`` as stored and ``aten._weight_int4pack_mm`` the same ``sz``. The kernel
layout is built at the first forward on a device and cached on the module (not saved, not in
``state_dict``); it is rebuilt when the buffers change. Other shapes, ``kernel=False`` or a kernel
error take the portable path: dequantize, then ``F.linear``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> lin = nn.Linear(128, 32)
    >>> q = Int4WeightOnlyLinear.from_float(lin, group_size=64)
    >>> x = torch.randn(4, 128)
    >>> bool(sqnr(lin(x), q(x)) > 15), q.weight.shape, q.weight.dtype
    (True, torch.Size([32, 64]), torch.uint8)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from torchslim.core.inference import version_key
from torchslim.core.modspec import register_spec_module
from torchslim.quantization.int4.linear_base import Int4LinearBase
from torchslim.quantization.int4.primitives import (
    Int4Tensors,
    check_group_size,
    dequantize_int4,
    dequantize_packed_int4,
    pack_int4,
    unpack_int4,
)

__all__ = ["Int4WeightOnlyLinear", "int4_kernel_supported"]

log = logging.getLogger(__name__)

# From this many rows (tokens) on, the matmul is compute-bound: the one-time dequantization of the
# weight to bf16 is spread over the rows, and a bf16 GEMM, whose per-row cost is below the int4
# kernel's, wins. Fewer rows are bound by weight traffic, where the packed int4 kernel wins.
DEQUANT_MIN_ROWS = 256


def int4_kernel_supported(device_type: str, in_features: int, out_features: int, group_size: int) -> bool:
    """Whether torch's int4 kernel takes this shape on ``device_type`` (else the dequantize path runs).

    Example:
        >>> int4_kernel_supported("cpu", 384, 1536, 128), int4_kernel_supported("cpu", 384, 100, 128)
        (True, False)
    """
    if check_group_size(in_features, group_size) is not None:
        return False
    if device_type == "cpu":
        return out_features % 16 == 0
    if device_type == "cuda":
        return out_features % 8 == 0 and in_features % 32 == 0
    return False


# Bound once: attribute lookups through torch.ops cost about a microsecond per call.
_INT4_MM_CPU = torch.ops.aten._weight_int4pack_mm_for_cpu
_INT4_MM_CUDA = torch.ops.aten._weight_int4pack_mm


def _cuda_inner_k_tiles(k: int) -> int:
    # CUDA's packing reads K in tiles of innerKTiles * 16 (innerKTiles ∈ {2, 4, 8}); the largest that divides K.
    return next(t for t in (8, 4, 2) if k % (t * 16) == 0)


@register_spec_module
class Int4WeightOnlyLinear(Int4LinearBase):
    """Linear with group-wise asymmetric int4 weights (two per byte) and float activations.

    Args:
        in_features, out_features, bias, group_size, input_scale, device: as
            :class:`~torchslim.quantization.int4.linear_base.Int4LinearBase`.
        kernel: use torch's int4 kernels where they apply; False: always dequantize (portable reference).

    Raises:
        ValueError: as :class:`~torchslim.quantization.int4.linear_base.Int4LinearBase`.
    """

    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, kernel: bool = True, **options: Any
    ) -> None:
        super().__init__(in_features, out_features, bias, **options)  # group_size, input_scale, device
        self.kernel = kernel
        self._packed_cache: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor] | None = None
        self._kernel_shape_ok: dict[str, bool] = {}  # device type -> whether torch's kernel takes this shape

    # ------------------------------------------------------------------ construction
    # (from_tensors / from_float: Int4LinearBase's, with ``kernel=`` passed through)

    def _register_weights(self, device: Any) -> None:
        n, k, n_groups = self.out_features, self.in_features, self.in_features // self.group_size
        self.register_buffer("weight", torch.full((n, k // 2), 0x88, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(n, n_groups, dtype=torch.bfloat16, device=device))
        self.register_buffer("zeros", torch.zeros(n, n_groups, dtype=torch.bfloat16, device=device))

    def _store_codes(self, t: Int4Tensors) -> None:
        self.weight.copy_(pack_int4(t.q))
        self.scales.copy_(t.scale.to(torch.bfloat16))
        self.zeros.copy_(t.zero.to(torch.bfloat16))

    # ------------------------------------------------------------------ spec (structure replay)

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {**super().torchslim_spec(), "kernel": self.kernel}

    @classmethod
    def _spec_options(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {"kernel": bool(spec.get("kernel", True))}

    # ------------------------------------------------------------------ compute

    def codes(self) -> torch.Tensor:
        """The unpacked codes ``[N, K]`` uint8 (0..15)."""
        return unpack_int4(self.weight)

    def _dequantized_codes(self) -> torch.Tensor:
        return dequantize_int4(self.codes(), self.scales, self.zeros, self.group_size)

    def _kernel_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Keyed on the buffers' identity and version: load_state_dict / .to() / copy_ invalidate it.
        # Read through _buffers: nn.Module.__getattr__ costs ~1 µs a lookup, and decode calls this per token.
        b = self._buffers
        w, s, z = b["weight"], b["scales"], b["zeros"]
        key = (device, version_key((w, s, z)))
        if self._packed_cache is not None and self._packed_cache[0] == key:
            return self._packed_cache[1], self._packed_cache[2]
        sz = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).to(torch.bfloat16).contiguous()  # [G, N, 2]
        if device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32).contiguous(), 8)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack(
                self.weight.contiguous(), _cuda_inner_k_tiles(self.in_features)
            )
        self._packed_cache = (key, packed, sz)
        return packed, sz

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = self._scaled_rows(x)
        b = self._buffers  # direct reads: this runs once per layer per decoded token (see _kernel_tensors)
        y = None
        # Under torch.export: the dequantize path (the kernel's layout cache reads data pointers, which
        # fake tensors lack); torchslim's own exports trace the kernel through torchslim/export/int4.py.
        fast = self.kernel and x.is_floating_point() and not torch.compiler.is_exporting()
        if fast and x2.shape[0] < DEQUANT_MIN_ROWS and self._kernel_ok(x.device.type):
            try:
                packed, sz = self._kernel_tensors(x.device)
                xb = x2 if x2.dtype == torch.bfloat16 and x2.is_contiguous() else x2.to(torch.bfloat16).contiguous()
                y = (_INT4_MM_CPU if x.device.type == "cpu" else _INT4_MM_CUDA)(xb, packed, self.group_size, sz)
                if y.dtype != x.dtype:
                    y = y.to(x.dtype)
            except RuntimeError as e:  # an unexpected kernel limit: stay correct, say so once
                log.warning("int4 kernel failed (%s); using the dequantize path for this module", e)
                self.kernel = False
                y = None
        if y is None:
            # Many rows (compute-bound) on the fast path: a bf16 GEMM with the bf16-rounded weight (the
            # precision the kernel works in). Otherwise the portable reference in the input's dtype.
            dtype = torch.bfloat16 if fast and x.dtype in (torch.float32, torch.bfloat16) else x.dtype
            w = dequantize_packed_int4(b["weight"], b["scales"], b["zeros"], self.group_size, dtype)
            y = F.linear(x2.to(dtype), w).to(x.dtype)
        if b["bias"] is not None:
            y = y + b["bias"].to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _kernel_ok(self, device_type: str) -> bool:
        ok = self._kernel_shape_ok.get(device_type)
        if ok is None:
            ok = self._kernel_shape_ok[device_type] = int4_kernel_supported(
                device_type, self.in_features, self.out_features, self.group_size
            )
        return ok
