"""``Int4Embedding``: an embedding table stored as group-wise asymmetric 4-bit rows (about 8× smaller).

Each row ``E[v]`` ``[D]`` is split into ``G = D / g`` groups of ``g`` consecutive values. Each group
keeps a float16 ``scale`` and ``minimum`` (round to nearest over the group's min-max range), and each
value a 4-bit code ``q ∈ {0, …, 15}``:

    ê = q · scale + minimum,  scale = (max − min) / 15

The parameters are rounded to float16 (how they are stored) *before* the codes are chosen, so the
codes are the nearest ones for the stored parameters. The codes are packed two per byte exactly as
:func:`~torchslim.quantization.int4.primitives.pack_int4` packs linear weights (column ``2i`` in the
high nibble), so a row is ``D / 2`` bytes plus ``4 · G`` bytes of parameters: 4.25 bits per value at
``g = 128``. A lookup gathers the packed rows and their parameters and unpacks them with a shift and a
mask, which ``torch.compile`` fuses and ONNX exports as ``Gather``, ``BitShift``, ``BitwiseAnd``,
``Cast``, ``Mul`` and ``Add``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> emb = nn.Embedding(100, 256)
    >>> q = Int4Embedding.from_float(emb, group_size=128)
    >>> tuple(q.weight.shape), q.weight.dtype, tuple(q.scale.shape)
    ((100, 128), torch.uint8, (100, 2))
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> bool(sqnr(emb(ids), q(ids)) > 15)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.modspec import register_spec_module
from torchslim.errors import ConfigError
from torchslim.quantization.common.primitives import NonFiniteError
from torchslim.quantization.int4.primitives import pack_int4
from torchslim.quantization.int8.dynamic import register_int4_rows
from torchslim.quantization.int8.modules import dtype_from_spec, dtype_spec, float_dtype_of

__all__ = ["Int4Embedding", "check_embedding_group_size", "quantize_rows_int4"]

_FP16_MAX = float(torch.finfo(torch.float16).max)


def check_embedding_group_size(embedding_dim: int, group_size: int) -> str | None:
    """Why ``group_size`` cannot split rows of ``embedding_dim`` values into 4-bit groups, or None when it can.

    The group size must be a positive even number (a group is whole bytes) that divides the row.

    Example:
        >>> check_embedding_group_size(384, 128) is None, check_embedding_group_size(100, 128)
        (True, 'embedding_dim 100 is not a multiple of group_size 128')
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        return f"group_size must be a positive even integer, got {group_size!r}"
    if embedding_dim % group_size:
        return f"embedding_dim {embedding_dim} is not a multiple of group_size {group_size}"
    return None


def quantize_rows_int4(table: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest 4-bit rows: ``(packed [V, D/2] uint8, scale [V, G] float16, minimum [V, G] float16)``.

    Min-max per group of ``group_size`` values along each row; ``minimum`` and then ``scale`` are
    rounded to float16 first and the codes ``clamp(round((e − minimum) / scale), 0, 15)`` chosen for
    them. A constant group (``max == min``, e.g. a zero padding row) gets ``scale = 0`` and is
    reproduced exactly.

    Raises:
        NonFiniteError: the table holds NaN or Inf.
        ValueError: a value is outside float16's range (the parameters could not store it), or
            ``group_size`` does not divide the rows (see :func:`check_embedding_group_size`).

    Example:
        >>> p, s, m = quantize_rows_int4(torch.tensor([[0.0, 1.5, 3.0, 0.0]]), 2)
        >>> p.tolist(), s.tolist(), m.tolist()
        ([[15, 240]], [[0.0999755859375, 0.199951171875]], [[0.0, 0.0]])
    """
    why = check_embedding_group_size(table.shape[-1], group_size)
    if why is not None:
        raise ValueError(why)
    w = table.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise NonFiniteError("the embedding table holds NaN or Inf")
    if w.numel() and float(w.abs().max()) > _FP16_MAX:
        raise ValueError(f"values beyond float16's range (|x| > {_FP16_MAX:g}) cannot be stored as int4 rows")
    g = w.reshape(w.shape[0], -1, group_size)  # [V, G, g]
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    minimum = lo.to(torch.float16)
    # From the stored minimum, so the top code still reaches the group's maximum.
    scale = ((hi - minimum.float()) / 15).clamp_min(0).to(torch.float16)
    s = scale.float().unsqueeze(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.where(s > 0, torch.round((g - minimum.float().unsqueeze(-1)) / safe), torch.zeros_like(g))
    codes = q.clamp_(0, 15).to(torch.uint8).reshape(w.shape)
    return pack_int4(codes), scale, minimum


@register_int4_rows
@register_spec_module
class Int4Embedding(nn.Module):
    """Embedding table stored as packed 4-bit rows with a float16 scale and minimum per group of values.

    Buffers: ``weight`` ``[V, D/2]`` uint8 (two codes per byte), ``scale`` and ``minimum`` ``[V, D/g]``
    float16 (see the module docstring for the arithmetic). ``forward(ids)`` gathers the packed rows
    and their parameters (an eighth of the float32 bytes), unpacks and dequantizes them in float32 and
    returns ``output_dtype``: the dtype of the table it was quantized from, or the one a whole-model
    ``CastDtype`` sets later (the same contract as
    :class:`~torchslim.quantization.int8.modules.Int8Embedding`). ``padding_idx`` is kept as an
    attribute (a lookup of it returns its stored row; an all-zero padding row stays exactly zero).

    Args:
        num_embeddings, embedding_dim, padding_idx: as ``nn.Embedding``.
        group_size: values per (scale, minimum) pair; a positive even divisor of ``embedding_dim``.

    Raises:
        ConfigError: ``group_size`` is not a positive even divisor of ``embedding_dim``.

    Example:
        >>> m = Int4Embedding(10, 64, group_size=32)
        >>> sorted((k, tuple(v.shape)) for k, v in m.state_dict().items())
        [('minimum', (10, 2)), ('scale', (10, 2)), ('weight', (10, 32))]
    """

    torchslim_compressed = True
    weight: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        group_size: int = 128,
        device: Any = None,
    ) -> None:
        super().__init__()
        why = check_embedding_group_size(embedding_dim, group_size)
        if why is not None:
            raise ConfigError(f"Int4Embedding: {why}", [f"embedding_group_size: {why}"])
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.group_size = group_size
        n_groups = embedding_dim // group_size
        self.register_buffer(
            "weight", torch.zeros(num_embeddings, embedding_dim // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer("scale", torch.zeros(num_embeddings, n_groups, dtype=torch.float16, device=device))
        self.register_buffer("minimum", torch.zeros(num_embeddings, n_groups, dtype=torch.float16, device=device))
        # Saved in the spec when not float32; a later CastDtype's recorded op sets it again on load.
        self.output_dtype: torch.dtype = torch.float32

    @classmethod
    def from_float(cls, emb: nn.Embedding, group_size: int = 128) -> Int4Embedding:
        """Quantize every row of ``emb.weight`` to 4 bits, ``group_size`` values per scale and minimum.

        Raises:
            ConfigError: ``group_size`` is not a positive even divisor of ``emb.embedding_dim``.
            ValueError: ``emb`` uses ``max_norm`` or sparse gradients, or holds values beyond float16.
            NonFiniteError: the table holds NaN or Inf.
        """
        if emb.max_norm is not None or emb.sparse:
            raise ValueError("embeddings with max_norm or sparse gradients are not supported")
        mod = cls(
            emb.num_embeddings, emb.embedding_dim, emb.padding_idx, group_size=group_size, device=emb.weight.device
        )
        packed, scale, minimum = quantize_rows_int4(emb.weight, group_size)
        mod.weight.copy_(packed)
        mod.scale.copy_(scale)
        mod.minimum.copy_(minimum)
        mod.output_dtype = float_dtype_of(emb.weight)
        return mod

    @staticmethod
    def check_group_size(embedding_dim: int, group_size: int) -> str | None:
        """Why ``group_size`` cannot split rows of ``embedding_dim`` values (see :func:`check_embedding_group_size`)."""
        return check_embedding_group_size(embedding_dim, group_size)

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "group_size": self.group_size,
            **dtype_spec(self.output_dtype),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int4Embedding:
        """An empty module from :meth:`torchslim_spec`'s output."""
        padding_idx = spec["padding_idx"]
        emb = cls(
            int(spec["num_embeddings"]),
            int(spec["embedding_dim"]),
            None if padding_idx is None else int(padding_idx),
            group_size=int(spec["group_size"]),
        )
        emb.output_dtype = dtype_from_spec(spec)
        return emb

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 table ``[V, D]`` this module looks rows up in."""
        return self._dequantize(self.weight, self.scale, self.minimum)

    def _dequantize(self, packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
        lead = packed.shape[:-1]
        if torch.compiler.is_exporting():
            # ONNX's exporter gives uint8 shifts a signed result type (ORT then refuses the graph); int32 is exact.
            packed = packed.to(torch.int32)
        codes = torch.stack((packed >> 4, packed & 0x0F), dim=-1)  # [..., D/2, 2]: high nibble first
        codes = codes.reshape(*lead, scale.shape[-1], self.group_size).float()
        out = codes * scale.float().unsqueeze(-1) + minimum.float().unsqueeze(-1)
        return out.reshape(*lead, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self._dequantize(
            F.embedding(ids, self.weight),  # [..., D/2] uint8: an eighth of the float32 bytes
            F.embedding(ids, self.scale),
            F.embedding(ids, self.minimum),
        )
        return out if self.output_dtype == torch.float32 else out.to(self.output_dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, group_size={self.group_size}"
        )
