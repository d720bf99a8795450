"""Int8 inference modules: plain int8 tensors + float32 scales, one class per (dtype, packing).

Every module keeps its data in buffers (``state_dict``, safetensors and size measurement just work),
sets ``torchslim_compressed = True`` (later steps skip it) and is rebuilt empty by
:func:`~torchslim.core.modspec.module_from_spec` from the JSON spec ``torchslim_spec()`` gives (the one
spec protocol of every swapped module), which the structure replays use.

Shapes: ``weight`` ``[N, K]`` int8 (``N`` = out_features), ``weight_scale`` ``[N]`` float32,
``bias`` ``[N]`` float32 or absent; embeddings ``[V, D]`` int8 with ``[V]`` row scales.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> lin = nn.Linear(64, 32)
    >>> q = Int8DynamicLinear.from_float(lin)
    >>> x = torch.randn(4, 64)
    >>> sqnr(lin(x), q(x)) > 30
    True
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.modspec import register_spec_module
from torchslim.quantization.common.primitives import EPS, PerChannel, choose_qparams, quantize

__all__ = [
    "Int8DynamicLinear",
    "Int8Embedding",
    "Int8WeightOnlyLinear",
    "dtype_from_spec",
    "dtype_spec",
    "float_dtype_of",
    "int8_dynamic_linear",
    "int8_weight_only_linear",
    "int_mm",
    "quantize_weight_per_channel",
]

log = logging.getLogger(__name__)


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(q [N, ...] int8, scale [N] float32)``.

    Raises:
        ValueError: the weight holds NaN or Inf.

    Example:
        >>> q, s = quantize_weight_per_channel(torch.tensor([[0.0, 0.0], [1.0, -0.5]]))
        >>> q.tolist(), round(s[1].item() * 127, 5)
        ([[0, 0], [127, -64]], 1.0)
    """
    if weight.dtype in (torch.bfloat16, torch.float16):  # quantize 16-bit weights with float32 arithmetic
        weight = weight.float()
    scale, _ = choose_qparams(weight, PerChannel(0))
    q = quantize(weight, scale, None, PerChannel(0))
    return q, scale.reshape(-1).contiguous()


_OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def float_dtype_of(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a compressed module hands on for a float ``tensor`` of the original module (float32 otherwise)."""
    return tensor.dtype if tensor.dtype in _OUTPUT_DTYPES.values() else torch.float32


def dtype_spec(dtype: torch.dtype) -> dict[str, str]:
    """``{"output_dtype": name}`` for a module spec; empty for float32 (the default older specs imply).

    Example:
        >>> dtype_spec(torch.bfloat16), dtype_spec(torch.float32)
        ({'output_dtype': 'bfloat16'}, {})
    """
    return {} if dtype == torch.float32 else {"output_dtype": str(dtype).removeprefix("torch.")}


def dtype_from_spec(spec: dict[str, Any]) -> torch.dtype:
    """The ``output_dtype`` of a module spec (float32 when absent); an unknown name raises ``ValueError``."""
    name = spec.get("output_dtype", "float32")
    if name not in _OUTPUT_DTYPES:
        raise ValueError(f"unknown output_dtype {name!r}")
    return _OUTPUT_DTYPES[name]


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] int8 @ b [K, N] int8 -> [M, N] int32`` with ``torch._int_mm``, padded where a kernel needs it.

    CUDA's kernel needs ``M > 16`` and ``K``, ``N`` multiples of 8; the CPU kernel takes any shape.
    Zero padding leaves the product unchanged; the result is sliced back.

    Example:
        >>> a = torch.ones(3, 5, dtype=torch.int8); b = torch.full((5, 2), 2, dtype=torch.int8)
        >>> int_mm(a, b)
        tensor([[10, 10],
                [10, 10],
                [10, 10]], dtype=torch.int32)
    """
    if a.device.type == "cpu":
        return torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = max(17 - m, 0), -k % 8, -n % 8
    if pm or pk or pn:
        a = F.pad(a, (0, pk, 0, pm))
        b = F.pad(b, (0, pn, 0, pk))
        return torch._int_mm(a, b)[:m, :n]
    return torch._int_mm(a, b)


def int8_dynamic_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
    outlier_idx: torch.Tensor | None = None,
    outlier_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x Wᵀ + b`` with per-token dynamic int8 activations and per-channel int8 weights.

    Each token (row) ``x_t`` gets ``s_t = max|x_t| / 127``; then
    ``y[t, n] = s_t · w_scale[n] · Σ_k q(x)[t, k] · W_q[n, k] + b[n]`` with the sum in int32
    (``torch._int_mm``). ``smooth`` ``[K]`` (SmoothQuant's ``1/s``) multiplies ``x`` first.

    Outlier decomposition (LLM.int8(), Dettmers et al., 2022): the input channels ``outlier_idx``
    ``[k]`` go through a float32 product with ``outlier_weight`` ``[N, k]`` instead; ``smooth`` must be
    0 on them (and the int8 weight columns 0), so they neither reach the int8 product nor widen the
    per-token scales of the other channels.

    Args:
        x: ``[..., K]`` float activations. weight: ``[N, K]`` int8. weight_scale: ``[N]`` float32.
        bias: ``[N]`` or None. smooth: ``[K]`` or None. outlier_idx: ``[k]`` int64 or None.
        outlier_weight: ``[N, k]`` float32 (with ``outlier_idx``).

    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    shape = x.shape
    x2 = x_raw = x.reshape(-1, shape[-1])
    if smooth is not None:
        x2 = x2 * smooth
    # Eager mode pays one pass per op over [M, K] / [M, N]: one min/max pass instead of abs + amax,
    # and in-place round / clamp / scale / bias avoid allocating a fresh tensor per step.
    mn, mx = torch.aminmax(x2, dim=-1, keepdim=True)
    x_scale = torch.maximum(-mn, mx).float().clamp_(min=EPS * 127).div_(127.0)  # [M, 1]
    xq = (x2 / x_scale).round_().clamp_(-127, 127).to(torch.int8)
    acc = int_mm(xq, weight.t())  # [M, N] int32
    y = acc.to(torch.float32).mul_(x_scale).mul_(weight_scale)
    if bias is not None:
        y = y.add_(bias)
    if outlier_idx is not None and outlier_weight is not None:
        y = y.add_(x_raw.index_select(1, outlier_idx).float() @ outlier_weight.t())
    return y.to(x.dtype).reshape(*shape[:-1], weight.shape[0])


class _Int8Linear(nn.Module):
    """Shared storage of the int8 linear modules."""

    torchslim_compressed = True
    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    def _load_float(self, linear: nn.Linear) -> None:
        q, s = quantize_weight_per_channel(linear.weight.detach())
        self.weight.copy_(q)
        self.weight_scale.copy_(s)
        if linear.bias is not None and self.bias is not None:
            self.bias.copy_(linear.bias.detach().float())

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight ``[N, K]`` this module computes with."""
        return self.weight.float() * self.weight_scale[:, None]

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@register_spec_module
class Int8DynamicLinear(_Int8Linear):
    """Linear with int8 per-channel weights and per-token int8 activations quantized at run time (W8A8).

    In eager mode the per-token quantize and the dequantize are separate element-wise passes; under
    ``torch.compile`` of the whole model (``Int8Dynamic(compile=True)``) Inductor fuses them with the
    neighbouring LayerNorm / GELU / residual add, which is where most of the speed-up comes from.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        smooth: keep a ``[K]`` buffer ``smooth`` that multiplies activations (SmoothQuant).
        outliers: number of input channels computed in float32 instead of int8 (buffers
            ``outlier_idx`` ``[k]`` and ``outlier_weight`` ``[N, k]``; needs ``smooth``, which is 0 on them).

    Example:
        >>> m = Int8DynamicLinear(8, 4)
        >>> sorted(m.state_dict())
        ['bias', 'weight', 'weight_scale']
    """

    smooth: torch.Tensor | None
    outlier_idx: torch.Tensor | None
    outlier_weight: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        smooth: bool = False,
        outliers: int = 0,
        device: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device)
        if outliers and not smooth:
            raise ValueError("outlier channels need the smooth buffer (it zeroes them before quantizing)")
        if not 0 <= outliers <= in_features:
            raise ValueError(f"outliers must be in [0, {in_features}], got {outliers}")
        self.register_buffer("smooth", torch.ones(in_features, device=device) if smooth else None)
        self.register_buffer(
            "outlier_idx", torch.arange(outliers, dtype=torch.int64, device=device) if outliers else None
        )
        self.register_buffer("outlier_weight", torch.zeros(out_features, outliers, device=device) if outliers else None)

    @classmethod
    def from_float(
        cls, linear: nn.Linear, *, smooth: torch.Tensor | None = None, outliers: torch.Tensor | None = None
    ) -> Int8DynamicLinear:
        """Quantize ``linear``; with ``smooth`` ``[K]`` the weight is scaled by ``1/smooth`` per input channel.

        SmoothQuant (Xiao et al., 2023): ``x Wᵀ = (x · diag(m)) (W · diag(1/m))ᵀ``; the activations
        are multiplied by ``smooth`` = m at run time, the weight columns divided by it before quantizing.
        ``outliers``: indices of input channels kept in float32 (see :func:`int8_dynamic_linear`); their
        int8 weight columns are zero, so they do not widen the per-channel weight scales either.
        """
        w = linear.weight.detach()
        idx = None if outliers is None or outliers.numel() == 0 else outliers.to(torch.int64).reshape(-1)
        if idx is not None and (idx.unique().numel() != idx.numel() or idx.min() < 0 or idx.max() >= w.shape[1]):
            raise ValueError(f"outlier channels must be distinct indices in [0, {w.shape[1]}), got {idx.tolist()}")
        mod = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            smooth=smooth is not None or idx is not None,
            outliers=0 if idx is None else idx.numel(),
            device=w.device,
        )
        if smooth is not None or idx is not None:
            m = torch.ones(w.shape[1], device=w.device) if smooth is None else smooth.float().clone()
            inv = 1.0 / m
            if idx is not None:
                m[idx], inv[idx] = 0.0, 0.0
                mod.outlier_idx.copy_(idx)
                mod.outlier_weight.copy_(w[:, idx].float())
            mod.smooth.copy_(m)
            linear = _scaled_copy(linear, inv.to(w))
        mod._load_float(linear)
        return mod

    def torchslim_spec(self) -> dict[str, Any]:
        spec = {**super().torchslim_spec(), "smooth": self.smooth is not None}
        if self.outlier_idx is not None:
            spec["outliers"] = self.outlier_idx.numel()
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8DynamicLinear:
        """An empty module from :meth:`torchslim_spec`'s output (specs without ``smooth`` / ``outliers`` have neither)."""
        return cls(
            int(spec["in_features"]),
            int(spec["out_features"]),
            bool(spec["bias"]),
            smooth=bool(spec.get("smooth", False)),
            outliers=int(spec.get("outliers", 0)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_dynamic_linear(
            x, self.weight, self.weight_scale, self.bias, self.smooth, self.outlier_idx, self.outlier_weight
        )

    def extra_repr(self) -> str:
        k = 0 if self.outlier_idx is None else self.outlier_idx.numel()
        return super().extra_repr() + f", smooth={self.smooth is not None}" + (f", outliers={k}" if k else "")


def _scaled_copy(linear: nn.Linear, col_scale: torch.Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(linear.weight * col_scale)
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out


def int8_weight_only_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``y = x (diag(s) W_q)ᵀ + b`` with int8 weights and float activations.

    16-bit activations use ``aten._weight_int8pack_mm`` (dequantizes inside the kernel) on CPU. For
    float32 activations that kernel is unvectorised (far slower than a float32 matmul), so a few tokens go
    through it in bf16, and many tokens (compute-bound: the weight's one-time dequantization is then
    negligible) through a dequantized ``F.linear``. The kernel needs ``K`` to be a multiple of 16 (it
    crashes or returns garbage otherwise, torch 2.13), so other shapes always take the dequantized path.
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if torch.compiler.is_exporting() and x.dtype == torch.float32:
        # One traceable kernel call (ONNX lowers it to DequantizeLinear + MatMul, keeping int8 weights).
        y = torch.ops.aten._weight_int8pack_mm(x2, weight, weight_scale)
        y = y if bias is None else y + bias
        return y.reshape(*shape[:-1], weight.shape[0])
    packed_ok = x.device.type == "cpu" and shape[-1] % 16 == 0
    if packed_ok and x.dtype in (torch.bfloat16, torch.float16):
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), weight, weight_scale.to(x.dtype))
        if bias is not None:
            y = y + bias.to(x.dtype)
    elif packed_ok and x2.shape[0] <= 16:
        y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), weight, weight_scale.bfloat16())
        y = y.to(x.dtype) if bias is None else y.to(x.dtype) + bias
    else:
        w = weight.to(x.dtype) * weight_scale.to(x.dtype)[:, None]
        y = F.linear(x2, w, None if bias is None else bias.to(x.dtype))
    return y.reshape(*shape[:-1], weight.shape[0])


@register_spec_module
class Int8WeightOnlyLinear(_Int8Linear):
    """Linear with int8 per-channel weights and float activations (W8A16 / W8A32): 4× smaller weights.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchslim.quantization.common.sqnr import sqnr
        >>> lin = nn.Linear(32, 16)
        >>> q = Int8WeightOnlyLinear.from_float(lin)
        >>> sqnr(lin(torch.ones(2, 32)), q(torch.ones(2, 32))) > 30
        True
    """

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8WeightOnlyLinear:
        """Quantize ``linear``'s weight per output channel (bias kept in float32)."""
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        mod._load_float(linear)
        return mod

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8WeightOnlyLinear:
        """An empty module from :meth:`torchslim_spec`'s output."""
        return cls(int(spec["in_features"]), int(spec["out_features"]), bool(spec["bias"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_weight_only_linear(x, self.weight, self.weight_scale, self.bias)


@register_spec_module
class Int8Embedding(nn.Module):
    """Embedding table stored as int8 rows with one float32 scale per row (4× smaller).

    ``forward(ids)`` gathers int8 rows ``[..., D]`` and their scales and returns ``output_dtype``: the
    dtype of the table it was quantized from (a bfloat16 model's LayerNorm needs bfloat16 inputs), or the
    one a whole-model ``CastDtype`` sets later (then the layers after the embedding run in that dtype too,
    instead of being promoted back to float32).

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchslim.quantization.common.sqnr import sqnr
        >>> emb = nn.Embedding(10, 8)
        >>> q = Int8Embedding.from_float(emb)
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> sqnr(emb(ids), q(ids)) > 30
        True
    """

    torchslim_compressed = True
    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, device: Any = None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32, device=device))
        # Saved in the spec when not float32; a later CastDtype's recorded op sets it again on load.
        self.output_dtype: torch.dtype = torch.float32

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> Int8Embedding:
        """Quantize every row of ``emb.weight`` symmetrically to int8."""
        if emb.max_norm is not None or emb.sparse:
            raise ValueError("embeddings with max_norm or sparse gradients are not supported")
        mod = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, device=emb.weight.device)
        q, s = quantize_weight_per_channel(emb.weight.detach())
        mod.weight.copy_(q)
        mod.weight_scale.copy_(s)
        mod.output_dtype = float_dtype_of(emb.weight)
        return mod

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            **dtype_spec(self.output_dtype),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8Embedding:
        """An empty module from :meth:`torchslim_spec`'s output."""
        padding_idx = spec["padding_idx"]
        emb = cls(int(spec["num_embeddings"]), int(spec["embedding_dim"]), padding_idx)
        emb.output_dtype = dtype_from_spec(spec)
        return emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight)  # [..., D] int8: gathers a quarter of the bytes
        out = rows.float() * self.weight_scale[ids].unsqueeze(-1)
        return out if self.output_dtype == torch.float32 else out.to(self.output_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
