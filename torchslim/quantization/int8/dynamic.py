"""``Int8Dynamic``: int8 weights and per-token int8 activations chosen at run time (W8A8 dynamic).

Linear layers become :class:`~torchslim.quantization.modules.Int8DynamicLinear` (``torch._int_mm``,
int8 × int8 → int32) and, by default, embeddings become row-wise
:class:`~torchslim.quantization.modules.Int8Embedding` (MiniLM: 47 of its 91 MB are embeddings).
No calibration is needed; with ``ctx.calibration`` two optional guards use it:

- ``smoothquant=α``: SmoothQuant outlier migration per layer (see :mod:`.calibrate`);
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
    >>> m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> x = torch.randn(8, 16); ref = m(x)
    >>> _ = compress_(m, Int8Dynamic())
    >>> type(m[0]).__name__, bool(sqnr(ref, m(x)) > 30)
    ('Int8DynamicLinear', True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from torchslim.calibration.passes import capture_inputs
from torchslim.core.adapters import adapt_for_
from torchslim.core.config import Config, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.walker import record_foreign_layers
from torchslim.quantization._swap import compile_model_, swap_int8_, swappable
from torchslim.quantization.calibrate import smooth_factors
from torchslim.quantization.cast import CastDtype
from torchslim.quantization.modules import Int8DynamicLinear, Int8Embedding, sqnr

__all__ = ["Int8Dynamic", "quantize_linears_"]


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


_SEARCH_ALPHAS = (None, 0.25, 0.5, 0.75)


def _outlier_counts(budget: int, channels: int) -> list[int]:
    """Outlier channel counts to try, doubling from 4 up to ``min(budget, channels)``: ``(32, 1536) -> 4, 8, 16, 32``."""
    top = min(budget, channels)
    counts = [4]
    while counts[-1] < top:
        counts.append(counts[-1] * 2)
    return sorted({min(c, top) for c in counts})


def quantize_linears_(
    model: nn.Module,
    targets: list[tuple[str, nn.Module]],
    make,
    kind: str,
    ctx: Context,
    *,
    smoothquant: float | str | None = None,
    min_sqnr_db: float | None = None,
    fallback: str = "bfloat16",
    outliers: int = 0,
    make_outliers=None,
) -> list[str]:
    """Swap Linear ``targets`` for ``make(linear, smooth)``; apply the SmoothQuant / SQNR guards; record.

    ``make(linear, smooth_or_None) -> module``. A layer failing ``min_sqnr_db`` first tries
    ``make_outliers(linear, smooth, channel_indices)`` with up to ``outliers`` channels, then stays in
    ``fallback`` precision (both recorded in ``ctx.events``). Returns the names quantized to int8.
    """
    inputs = {}
    if smoothquant is not None or min_sqnr_db is not None:
        inputs = capture_inputs(model, [n for n, _ in targets], ctx.calibration, kind)
    keep: list[str] = []

    def smooth_for(absmax: torch.Tensor | None, linear: nn.Module, alpha: float | None):
        if alpha is None or absmax is None:
            return None
        return 1.0 / smooth_factors(absmax, linear.weight, alpha)

    def rescue(name, linear, x, ref, absmax, alpha, best_db) -> nn.Module | None:
        """The int8 module keeping the fewest largest-activation channels (4, 8, …) in float32 that passes."""
        order = absmax.argsort(descending=True)
        smooth = smooth_for(absmax, linear, alpha)
        for k in _outlier_counts(outliers, order.numel()):
            q = make_outliers(linear, smooth, order[:k].sort().values)
            db = sqnr(ref, q(x))
            if db >= min_sqnr_db:
                ctx.record(
                    f"{kind}: {name} keeps {k} outlier input channel(s) in float32 "
                    f"(int8 output SQNR {best_db:.1f} dB -> {db:.1f} dB)"
                )
                return q
        return None

    def swap(name: str, linear: nn.Module) -> nn.Module | None:
        alphas = _SEARCH_ALPHAS if smoothquant == "search" else (smoothquant,)
        x = inputs[name].to(linear.weight.dtype) if inputs else None
        absmax = inputs[name].abs().amax(dim=0) if inputs else None
        ref = None if x is None else linear(x)
        best, best_db, best_alpha = None, float("-inf"), None
        for alpha in alphas:
            q = make(linear, smooth_for(absmax, linear, alpha))
            if x is None or len(alphas) == 1 and min_sqnr_db is None:
                best = q
                break
            db = sqnr(ref, q(x))
            if db > best_db:
                best, best_db, best_alpha = q, db, alpha
        if min_sqnr_db is not None and best_db < min_sqnr_db:
            if outliers and make_outliers is not None:
                rescued = rescue(name, linear, x, ref, absmax, best_alpha, best_db)
                if rescued is not None:
                    return rescued
            keep.append(name)
            ctx.record(f"{kind}: {name} kept in {fallback} (int8 output SQNR {best_db:.1f} dB < {min_sqnr_db} dB)")
            return None
        return best

    done = swap_int8_(model, targets, swap, kind, ctx)
    if keep and fallback == "bfloat16":
        from torchslim.api import compress_

        select = Select(include=tuple(f"^{re.escape(n)}$" for n in keep))
        compress_(model, CastDtype("bfloat16"), select=select, ctx=ctx)
    return done


def split_targets(
    model: nn.Module, select: Select, kinds: tuple[type[nn.Module], ...], kind: str, ctx: Context
) -> list[tuple[str, nn.Module]]:
    """Selected modules torchslim can swap; selected Linear/Embedding it cannot are listed in ``ctx.events``.

    First (:func:`~torchslim.core.adapters.adapt_for_`): selected Hugging Face ``Conv1D`` layers become
    equal Linear layers, and an ``nn.MultiheadAttention`` that would bypass a swapped layer (its
    ``out_proj``, or the Linear layers of the ``nn.TransformerEncoderLayer`` it serves) is split into
    separate q/k/v/out Linear layers; those are then targets too.
    """
    select = adapt_for_(model, select, kind=kind, ctx=ctx, swaps=True)
    targets, skipped = [], []
    for name, module in select.modules(model):
        if swappable(module, kinds):
            targets.append((name, module))
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            skipped.append(name)
    if skipped:
        ctx.record(f"{kind}: skipped {len(skipped)} module(s) it cannot swap: {', '.join(skipped)}")
    record_foreign_layers(model, kind, ctx)
    return targets


@register_transform(Int8Dynamic, scope="model")
def _int8_dynamic(model: nn.Module, config: Int8Dynamic, select: Select, ctx: Context) -> nn.Module:
    kinds = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    targets = split_targets(model, select, kinds, config.kind, ctx)
    linears = [(n, m) for n, m in targets if isinstance(m, nn.Linear)]
    embeddings = [(n, m) for n, m in targets if isinstance(m, nn.Embedding)]
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
    swap_int8_(model, embeddings, _embedding_or_skip(ctx, config.kind), config.kind + " embeddings", ctx)
    if config.compute_dtype == "bfloat16":
        from torchslim.api import compress_

        compress_(model, CastDtype("bfloat16"), ctx=ctx)  # recorded: ts.load replays it
        ctx.record(f"{config.kind}: compute dtype bfloat16 (layers kept unquantized run in bfloat16)")
    if config.compile:
        compile_model_(model)
    return model


def _embedding_or_skip(ctx: Context, kind: str):
    def make(name: str, emb: nn.Module) -> nn.Module | None:
        try:
            return Int8Embedding.from_float(emb)
        except ValueError as e:
            ctx.record(f"{kind}: skipped {name} ({e})")
            return None

    return make
