"""The calibration pass: run calibration batches through a model, and capture what named layers see.

Shared by every technique that looks at activations (static int8 observers, SmoothQuant, activation
channel pruning, layer dropping, QAT's observer warm-up).

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> capture_inputs(m, ["0"], [torch.ones(4, 3)], kind="demo")["0"].shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.batches import InputFn, call_model
from torchslim.core.progress import progress
from torchslim.errors import ConfigError

__all__ = ["StopForward", "capture_inputs", "run_calibration"]


class StopForward(Exception):
    """Raised by a hook once it has seen what it needs: :func:`run_calibration` ends that batch's forward there."""


def run_calibration(model: nn.Module, batches: Sequence[Any], input_fn: InputFn | None = None) -> None:
    """Run every calibration batch through ``model`` in eval mode without grad.

    A batch is any layout :func:`torchslim.core.batches.call_model` reads (a tensor, positional
    inputs, ``(inputs, target)``, a dict of keyword inputs); targets are left out of the call. A hook
    raising :class:`StopForward` skips the rest of that batch's forward.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches, "calibration", unit="batches"):
                try:
                    call_model(model, batch, input_fn)
                except StopForward:
                    pass
    finally:
        model.train(was_training)


def capture_inputs(
    model: nn.Module,
    names: Sequence[str],
    calibration: Sequence[Any] | None,
    kind: str,
    max_rows: int = 4096,
    input_fn: InputFn | None = None,
) -> dict[str, torch.Tensor]:
    """The input rows ``[M, K]`` (float32, at most ``max_rows``, evenly spaced) that each named Linear sees.

    Raises:
        ConfigError: no calibration data, or NaN/Inf reaching a layer (the message names the layer).
    """
    if not calibration:
        raise ConfigError(f"{kind}: needs calibration data; pass ctx=Context(calibration=[batch, ...])")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            if not torch.isfinite(x).all():
                raise ConfigError(f"{kind}: calibration data reaching layer {name!r} contains NaN or Inf values")
            seen[name].append(x.reshape(-1, x.shape[-1]).float())

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        run_calibration(model, calibration, input_fn)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, rows in seen.items():
        if not rows:
            raise ConfigError(f"{kind}: layer {n!r} was never called by the calibration data")
        x = torch.cat(rows)
        if x.shape[0] > max_rows:  # deterministic subsample: evenly spaced rows
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).round().long()]
        out[n] = x
    return out
