"""``MixedPrecision``: choose int4 / int8 / bf16 per Linear layer by sensitivity, under a size budget.

Each selected layer is quantized every allowed way; its sensitivity to a choice is the output SQNR on
the calibration inputs, computed exactly from the layer's input Hessian ``H = 2/T · X Xᵀ`` (taken per
layer by the shared calibration pass, forward stopped at the layer):

    SQNR = 10 log10( tr(W H Wᵀ) / tr(ΔW H ΔWᵀ) ),      ΔW = Ŵ − W  (bias excluded: no choice changes it)

The choice is a multiple-choice knapsack solved greedily (:func:`choose_precisions`): every layer
starts at its smallest option, then the upgrade with the largest drop of relative noise power
``10^(−SQNR/10)`` per extra byte that still fits the budget is taken, until none fits.

The per-layer choice is in ``ctx.events`` and, as a plain dict, in :func:`precision_plan` of the model.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.core.context import Context
    >>> m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    >>> ctx = Context(calibration=[torch.randn(32, 64)])
    >>> _ = compress_(m, MixedPrecision(budget_ratio=0.25, group_size=64), ctx=ctx)
    >>> sorted(v["choice"] for v in precision_plan(m).values())
    ['int4', 'int8']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from torchslim.core.config import Config, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.errors import ConfigError
from torchslim.quantization.common.sqnr import sqnr
from torchslim.quantization.common.swap import split_targets
from torchslim.quantization.int4.primitives import check_group_size
from torchslim.quantization.int4.weight_only import Int4WeightOnly, calibrated_swap_, check_finite_weights, int4_linear
from torchslim.quantization.int8.modules import Int8WeightOnlyLinear

__all__ = ["MixedPrecision", "choose_precisions", "layer_bytes", "precision_plan"]

CHOICES = ("int4", "int8", "bf16", "fp32")
_PLAN_ATTR = "torchslim_precision_plan"


@register_config("mixed-precision")
@dataclass(frozen=True)
class MixedPrecision(Config):
    """Per-layer int4 / int8 / bf16 (/ fp32) chosen by output SQNR under a weight-size budget.

    Args:
        budget_ratio: the selected Linear weights may take this fraction of their fp32 bytes (e.g. 0.2).
        budget_bytes: or this many bytes in all (give exactly one of the two).
        choices: the allowed precisions, from ``"int4"``, ``"int8"``, ``"bf16"``, ``"fp32"``.
        group_size: int4 group size.
        method: int4 method (``"rtn"``, ``"gptq"``, ``"awq"``, ``"hqq"``).
        progress: progress bar over the layers while measuring (on a terminal).
    """

    budget_ratio: float | None = None
    budget_bytes: int | None = None
    choices: tuple[str, ...] = ("int4", "int8", "bf16")
    group_size: int = 128
    method: Literal["rtn", "gptq", "awq", "hqq"] = "gptq"
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.budget_ratio is None) == (self.budget_bytes is None):
            fail(self, "budget_ratio", "give exactly one of budget_ratio (fraction of fp32 bytes) or budget_bytes")
        if self.budget_ratio is not None:
            check_range(self, "budget_ratio", 0.0, 1.0, low_open=True, hint="a fraction of the fp32 bytes, e.g. 0.2")
        if self.budget_bytes is not None and (
            not isinstance(self.budget_bytes, int) or isinstance(self.budget_bytes, bool) or self.budget_bytes <= 0
        ):
            fail(self, "budget_bytes", f"must be a positive integer, got {self.budget_bytes!r}")
        if isinstance(self.choices, str):
            fail(self, "choices", f"must be a list such as ['int4', 'int8'], got the string {self.choices!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        bad = [c for c in self.choices if c not in CHOICES]
        if bad or not self.choices or len(set(self.choices)) != len(self.choices):
            fail(self, "choices", f"must be distinct values from {', '.join(CHOICES)}, got {list(self.choices)!r}")
        # The int4 options are validated by the int4 config itself (same messages).
        Int4WeightOnly(group_size=self.group_size, method=self.method)

    def default_select(self) -> Select:
        return Select(types=("Linear",))


def layer_bytes(choice: str, out_features: int, in_features: int, group_size: int = 128) -> int:
    """Weight bytes of one ``[out, in]`` Linear in ``choice`` (bias excluded: the same in every choice).

    Example:
        >>> [layer_bytes(c, 64, 128, 32) for c in ("int4", "int8", "bf16", "fp32")]
        [5120, 8448, 16384, 32768]
    """
    n, k = out_features, in_features
    if choice == "int4":
        return n * k // 2 + 2 * 2 * n * (k // group_size)  # packed codes + bf16 scale and zero per group
    if choice == "int8":
        return n * k + 4 * n  # int8 codes + float32 scale per row
    if choice == "bf16":
        return 2 * n * k
    if choice == "fp32":
        return 4 * n * k
    raise ValueError(f"unknown precision {choice!r}")


def choose_precisions(options: dict[str, dict[str, tuple[int, float]]], budget: int) -> dict[str, str]:
    """Greedy multiple-choice knapsack: ``{layer: {choice: (bytes, sqnr_db)}}`` -> ``{layer: choice}``.

    Raises:
        ConfigError: even the smallest choice of every layer exceeds ``budget``.

    Example:
        >>> opts = {"a": {"int4": (10, 20.0), "int8": (20, 40.0)}, "b": {"int4": (10, 8.0), "int8": (20, 40.0)}}
        >>> choose_precisions(opts, 30)  # the upgrade buys most for the layer int4 hurts most
        {'a': 'int4', 'b': 'int8'}
    """

    def noise(db: float) -> float:
        return 0.0 if db == math.inf else 10.0 ** (-db / 10.0)

    pick = {name: min(opts, key=lambda c: (opts[c][0], -opts[c][1])) for name, opts in options.items()}
    used = sum(options[n][c][0] for n, c in pick.items())
    if used > budget:
        raise ConfigError(f"mixed-precision: the budget of {budget} bytes is below the smallest choice ({used} bytes)")
    while True:
        best: tuple[float, str, str] | None = None
        for name, opts in options.items():
            cur_bytes, cur_db = opts[pick[name]]
            for choice, (nbytes, db) in opts.items():
                extra, gain = nbytes - cur_bytes, noise(cur_db) - noise(db)
                if extra <= 0 or gain <= 0 or used + extra > budget:
                    continue
                score = gain / extra
                if best is None or score > best[0]:
                    best = (score, name, choice)
        if best is None:
            return pick
        _, name, choice = best
        used += options[name][choice][0] - options[name][pick[name]][0]
        pick[name] = choice


def precision_plan(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The per-layer choice ``{name: {"choice", "sqnr_db", "bytes", "options"}}`` of the last MixedPrecision step."""
    return {k: dict(v) for k, v in model.__dict__.get(_PLAN_ATTR, {}).items()}


@register_transform(MixedPrecision, scope="model")
def _mixed_precision(model: nn.Module, config: MixedPrecision, select: Select, ctx: Context) -> nn.Module:
    kind = config.kind
    # Layers the int4 group size does not fit can still take the other precisions.
    targets = split_targets(model, select, (nn.Linear,), kind, ctx)
    check_finite_weights(targets)
    int4_config = Int4WeightOnly(group_size=config.group_size, method=config.method, progress=False)
    fp32_bytes = sum(layer_bytes("fp32", m.out_features, m.in_features) for _, m in targets)
    budget = config.budget_bytes if config.budget_bytes is not None else int(config.budget_ratio * fp32_bytes)
    options: dict[str, dict[str, tuple[int, float]]] = {}
    modules: dict[str, dict[str, nn.Module | None]] = {}

    def measure(name: str, linear: nn.Module, hessian: torch.Tensor | None) -> None:
        w = linear.weight.detach().float()
        n, k = w.shape
        opts, mods = {}, {}
        for choice in config.choices:
            if choice == "int4":
                if check_group_size(k, config.group_size):
                    continue
                notes: list[str] = []
                q = int4_linear(linear, int4_config, hessian, notes)
                for note in notes:
                    ctx.record(f"{kind}: {name}: int4 {note}")
                w_hat, mod = q.dequantized_weight(), q
            elif choice == "int8":
                mod = Int8WeightOnlyLinear.from_float(linear)
                w_hat = mod.dequantized_weight()
            elif choice == "bf16":
                w_hat, mod = w.bfloat16().float(), None
            else:
                w_hat, mod = w, None
            opts[choice] = (layer_bytes(choice, n, k, config.group_size), sqnr(w, w_hat, hessian))
            mods[choice] = mod
        options[name], modules[name] = opts, mods

    # Measure every layer on the float model (nothing swapped: make returns None), then choose.
    calibrated_swap_(
        model, targets, lambda n, m, h: measure(n, m, h), kind, ctx, hessians=True, sequential=True,
        progress=config.progress,
    )  # fmt: skip
    if not options:
        ctx.record(f"{kind}: no layer selected")
        return model
    pick = choose_precisions(options, budget)
    by_name = dict(targets)
    swaps = [(n, by_name[n]) for n, c in pick.items() if c in ("int4", "int8")]
    calibrated_swap_(model, swaps, lambda n, m, h: modules[n][pick[n]], kind, ctx, hessians=False, progress=False)
    keep_bf16 = [n for n, c in pick.items() if c == "bf16"]
    if keep_bf16:
        from torchslim.api import compress_
        from torchslim.quantization.cast import CastDtype

        compress_(model, CastDtype("bfloat16"), select=Select(include=tuple(f"^{re.escape(n)}$" for n in keep_bf16)))
    plan = {
        n: {
            "choice": c,
            "sqnr_db": options[n][c][1],
            "bytes": options[n][c][0],
            "options": {k: {"bytes": b, "sqnr_db": db} for k, (b, db) in options[n].items()},
        }
        for n, c in pick.items()
    }
    model.__dict__[_PLAN_ATTR] = plan
    used = sum(v["bytes"] for v in plan.values())
    counts = {c: sum(1 for v in plan.values() if v["choice"] == c) for c in config.choices}
    ctx.record(
        f"{kind}: {used} of {budget} budget bytes ({used / max(1, fp32_bytes):.1%} of fp32); "
        + ", ".join(f"{c}: {k}" for c, k in counts.items())
    )
    for n, v in plan.items():
        ctx.record(f"{kind}: {n} -> {v['choice']} ({v['sqnr_db']:.1f} dB, {v['bytes']} bytes)")
    return model
