"""``Int8Dynamic``: int8 weights and per-token int8 activations chosen at run time (W8A8 dynamic).

Linear layers become :class:`~torchslim.quantization.int8.modules.Int8DynamicLinear` (``torch._int_mm``,
int8 × int8 → int32) and, by default, embeddings become row-wise
:class:`~torchslim.quantization.int8.modules.Int8Embedding` (MiniLM: 47 of its 91 MB are embeddings).
No calibration is needed; with ``ctx.calibration`` two optional guards use it:

- ``smoothquant=α``: SmoothQuant outlier migration per layer (see :mod:`~torchslim.quantization.common.smoothquant`);
  ``smoothquant="search"`` picks, per layer, the α in {none, 0.25, 0.5, 0.75} whose int8 output has
  the best SQNR on the calibration inputs (one α rarely suits every layer: MiniLM's FFN outputs want
  0.75, most attention projections 0.5).
- ``min_sqnr_db``: a layer whose int8 output SQNR on the calibration inputs falls below the floor
  stays in ``fallback`` precision (bf16 by default) instead, and the report says so (``ctx.events``).
- ``outliers=k``: before falling back, such a layer may keep up to ``k`` input channels (those with
  the largest calibration activations, tried 4, 8, 16, … at a time) in a small float32 product beside
  the int8 one (LLM.int8()'s outlier decomposition); the first count that passes the floor is kept,
  and the report says how many. MiniLM's layer-3 FFN output needs 4 of its 1536 channels (31.8 → 41.1 dB).

``compute_dtype="bfloat16"`` runs everything that stays in floating point (LayerNorm, attention, GELU,
fallback layers, the activations between layers) in bf16 after quantizing, recorded as a ``CastDtype``
step: every element-wise pass moves half the bytes and attention runs on the CPU's bf16 units, while
the int8 layers keep their float32 scales and accumulate in int32.

``compile=True`` compiles the whole model in place (``nn.Module.compile``): Inductor fuses the
per-token quantize with the LayerNorm / GELU before it and the dequantize with the bias and residual
after it, which eager mode runs as separate passes over the activations.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> x = torch.randn(8, 16); ref = m(x)
    >>> _ = compress_(m, Int8Dynamic())
    >>> type(m[0]).__name__, bool(sqnr(ref, m(x)) > 30)
    ('Int8DynamicLinear', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn

from torchslim.core.config import Config, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.quantization.cast import CastDtype
from torchslim.quantization.common.linears import quantize_linears_
from torchslim.quantization.common.swap import split_targets, swap_int8_
from torchslim.quantization.int8.compile_cpu import compile_model_
from torchslim.quantization.int8.modules import Int8DynamicLinear, Int8Embedding

__all__ = ["Int8Dynamic", "embedding_or_skip", "int8_targets", "swap_int8_embeddings_"]


@register_config("int8-dynamic")
@dataclass(frozen=True)
class Int8Dynamic(Config):
    """Dynamic int8: per-channel int8 weights, per-token int8 activations, int8 embeddings.

    Args:
        embeddings: also store ``nn.Embedding`` tables as int8 rows (4× smaller, gathers stay cheap).
        compile: ``torch.compile`` the whole model in place after quantizing (fused element-wise passes;
            the first call compiles). Off by default: eager mode works everywhere.
        smoothquant: SmoothQuant migration strength ``α`` in [0, 1], or ``"search"`` for the best α per
            layer (needs calibration); None: off.
        min_sqnr_db: keep a layer in ``fallback`` precision when its int8 output SQNR on the calibration
            data is below this many dB (needs calibration); None: no check.
        fallback: ``"bfloat16"`` (half the bytes) or ``"float32"`` (leave the layer as it is; faster
            than bf16 on CPUs without AMX). With ``compute_dtype="bfloat16"`` every float layer is bf16.
        compute_dtype: ``"float32"`` (default) or ``"bfloat16"``: the dtype of the float layers and of the
            activations between layers (see the module docstring).
        outliers: at most this many input channels per layer may stay in float32 so that a layer under
            ``min_sqnr_db`` still runs in int8 (0: off; needs ``min_sqnr_db``).
    """

    embeddings: bool = True
    compile: bool = False
    smoothquant: float | Literal["search"] | None = None
    min_sqnr_db: float | None = None
    fallback: Literal["bfloat16", "float32"] = "bfloat16"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    outliers: int = 0

    def __post_init__(self) -> None:
        if self.smoothquant != "search" and self.smoothquant is not None:
            check_range(self, "smoothquant", 0.0, 1.0, hint="SmoothQuant's alpha, usually 0.5, or 'search'")
        if self.fallback not in ("bfloat16", "float32"):
            fail(self, "fallback", f"must be 'bfloat16' or 'float32', got {self.fallback!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            fail(self, "compute_dtype", f"must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.min_sqnr_db is not None:
            check_range(self, "min_sqnr_db", 0.0, 100.0, hint="a floor in dB such as 30")
        if isinstance(self.outliers, bool) or not isinstance(self.outliers, int) or self.outliers < 0:
            fail(self, "outliers", f"must be a whole number >= 0, got {self.outliers!r}")
        if self.outliers and self.min_sqnr_db is None:
            fail(self, "outliers", "only acts on layers under min_sqnr_db; set min_sqnr_db too (e.g. 33)")
        for f in ("embeddings", "compile"):
            if not isinstance(getattr(self, f), bool):
                fail(self, f, f"must be true or false, got {getattr(self, f)!r}")

    def default_select(self) -> Select:
        return Select(types=("Linear", "Embedding"))


@register_transform(Int8Dynamic, scope="model")
def _int8_dynamic(model: nn.Module, config: Int8Dynamic, select: Select, ctx: Context) -> nn.Module:
    linears, embeddings = int8_targets(model, select, config.embeddings, config.kind, ctx)
    quantize_linears_(
        model,
        linears,
        lambda linear, smooth: Int8DynamicLinear.from_float(linear, smooth=smooth),
        config.kind,
        ctx,
        smoothquant=config.smoothquant,
        min_sqnr_db=config.min_sqnr_db,
        outliers=config.outliers,
        make_outliers=lambda linear, smooth, idx: Int8DynamicLinear.from_float(linear, smooth=smooth, outliers=idx),
        # Under a bf16 compute dtype the whole-model cast below makes the kept layers bf16 anyway; a
        # partial bf16 cast first would put float32 output hooks on them and promote what follows.
        fallback=config.fallback if config.compute_dtype == "float32" else "float32",
    )
    swap_int8_embeddings_(model, embeddings, config.kind, ctx)
    if config.compute_dtype == "bfloat16":
        from torchslim.api import compress_

        compress_(model, CastDtype("bfloat16"), ctx=ctx)  # recorded: ts.load replays it
        ctx.record(f"{config.kind}: compute dtype bfloat16 (layers kept unquantized run in bfloat16)")
    if config.compile:
        compile_model_(model)
    return model


def int8_targets(
    model: nn.Module, select: Select, embeddings: bool, kind: str, ctx: Context
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The selected ``(name, nn.Linear)`` and, when ``embeddings``, ``(name, nn.Embedding)`` pairs of an
    int8 step (through :func:`split_targets`: compressed or unselected modules are left out)."""
    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    targets = split_targets(model, select, kinds, kind, ctx)
    return (
        [(n, m) for n, m in targets if isinstance(m, nn.Linear)],
        [(n, m) for n, m in targets if isinstance(m, nn.Embedding)],
    )


def swap_int8_embeddings_(model: nn.Module, embeddings: list[tuple[str, nn.Module]], kind: str, ctx: Context) -> None:
    """Swap each ``(name, nn.Embedding)`` for an :class:`Int8Embedding`; one that cannot be is skipped and recorded."""
    swap_int8_(model, embeddings, embedding_or_skip(ctx, kind), kind + " embeddings", ctx)


def embedding_or_skip(ctx: Context, kind: str):
    """``make(name, embedding)`` for :func:`swap_int8_`: an :class:`Int8Embedding`, or None (skipped, recorded) when it cannot be one."""

    def make(name: str, emb: nn.Module) -> nn.Module | None:
        try:
            return Int8Embedding.from_float(emb)
        except ValueError as e:
            ctx.record(f"{kind}: skipped {name} ({e})")
            return None

    return make
