"""Input statistics of Linear/Conv layers over calibration batches (Wanda norms, SparseGPT Hessians).

Conv inputs are unfolded into patches (``[in·kh·kw, tokens]``) so the same formulas apply to the
flattened ``[out, in·kh·kw]`` weight.

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> stats = collect_input_stats(m, {"0": m[0]}, [(torch.ones(4, 3),)], hessian=True)
    >>> stats["0"].norm.tolist(), stats["0"].count
    ([2.0, 2.0, 2.0], 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.calibration.passes import StopForward, run_calibration
from torchslim.core.batches import InputFn
from torchslim.errors import ConfigError


@dataclass
class InputStats:
    """Running sums for one layer: per-input squared sums (→ L2 norms) and optionally X Xᵀ."""

    sq_sum: torch.Tensor
    xxt: torch.Tensor | None
    count: int = 0

    @property
    def norm(self) -> torch.Tensor:
        return self.sq_sum.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        if self.xxt is None:
            raise ValueError("Hessian was not collected")
        return 2.0 * self.xxt / max(1, self.count)


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``[features, tokens]`` matching the flattened weight's columns."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # [B, in*k*k, L]
        return cols.permute(1, 0, 2).reshape(cols.shape[1], -1)
    if isinstance(module, nn.Conv1d):
        cols = F.unfold(
            x.unsqueeze(-1),
            (module.kernel_size[0], 1),
            (module.dilation[0], 1),
            (module.padding[0], 0) if isinstance(module.padding, tuple) else module.padding,
            (module.stride[0], 1),
        )
        return cols.permute(1, 0, 2).reshape(cols.shape[1], -1)
    raise TypeError(f"no input statistics for {type(module).__name__}")


def collect_input_stats(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Sequence[Any],
    *,
    hessian: bool = False,
    input_fn: InputFn | None = None,
) -> dict[str, InputStats]:
    """Run ``batches`` through ``model`` and accumulate each layer's input statistics.

    A batch is any layout :func:`torchslim.core.batches.call_model` reads (targets are left out).

    Raises:
        ConfigError: no calibration batches, or non-finite calibration data (naming the layer).
    """
    if not batches:
        raise ConfigError("this pruning method needs calibration data: give Context(calibration=[...])")
    stats: dict[str, InputStats] = {}
    stop_early = len(layers) == 1

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = layer_inputs(mod, args[0].detach()).double()
            if not bool(torch.isfinite(x).all()):
                raise ConfigError(f"calibration inputs to layer {name!r} contain NaN or Inf")
            st = stats.get(name)
            if st is None:
                st = stats[name] = InputStats(
                    torch.zeros(x.shape[0], dtype=torch.float64),
                    torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64) if hessian else None,
                )
            st.sq_sum += (x * x).sum(dim=1)
            if st.xxt is not None:
                st.xxt += x @ x.T
            st.count += x.shape[1]
            if stop_early:  # the only hooked layer has seen its input: the rest of the forward is waste
                raise StopForward

        return fn

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in layers.items()]
    try:
        run_calibration(model, batches, input_fn)
    finally:
        for h in handles:
            h.remove()
    return stats
