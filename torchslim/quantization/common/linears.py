"""Swap Linear layers for quantized ones under SmoothQuant and an output-SQNR floor (int8 and mixed precision).

:func:`quantize_linears_` is the one place that decides, per Linear layer, which quantized module
replaces it, from the layer's calibration inputs (:func:`~torchslim.calibration.capture_inputs`):

- SmoothQuant (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
  Large Language Models") with a given ``α``, or per layer the ``α`` in {none, 0.25, 0.5, 0.75} whose
  quantized output has the best SQNR (``"search"``);
- a floor on that SQNR: a layer under it first tries keeping its largest-activation input channels in
  float32 (LLM.int8()'s outlier decomposition: Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix
  Multiplication for Transformers at Scale"), then stays in the fallback precision, and
  ``ctx.events`` says which.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from torchslim.calibration.passes import capture_inputs
from torchslim.core.context import Context
from torchslim.core.select import Select
from torchslim.quantization.cast import CastDtype
from torchslim.quantization.common.smoothquant import smooth_factors
from torchslim.quantization.common.sqnr import sqnr
from torchslim.quantization.common.swap import swap_int8_

__all__ = ["quantize_linears_"]

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
