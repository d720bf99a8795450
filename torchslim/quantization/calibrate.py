"""Calibration passes: capture what each layer sees, SmoothQuant factors, and the per-layer SQNR check.

SmoothQuant (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models") migrates activation outliers into the weights with a per-input-channel factor

    s_j = max|X_j|^α / max|W_{:, j}|^(1−α),      X W ᵀ = (X diag(s)⁻¹) (W diag(s))ᵀ

so both factors quantize well; ``α`` (0.5 by default) sets how much difficulty moves to the weights.

Example:
    >>> import torch
    >>> act = torch.tensor([100.0, 1.0]); w = torch.tensor([[1.0, 1.0]])
    >>> smooth_factors(act, w, alpha=0.5)
    tensor([10.,  1.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.batches import InputFn, call_model
from torchslim.core.progress import progress
from torchslim.errors import ConfigError

__all__ = ["capture_inputs", "run_calibration", "smooth_factors"]

# Bounds on s: an all-zero channel (dead ReLU, padding) must not give 0 or inf.
_S_MIN, _S_MAX = 1e-4, 1e4


def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's ``s`` ``[K]`` from activation channel maxima ``[K]`` and a weight ``[N, K]`` (finite, > 0)."""
    a = act_absmax.float().clamp(min=1e-5)
    w = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(_S_MIN, _S_MAX)


def run_calibration(model: nn.Module, batches: Sequence[Any], input_fn: InputFn | None = None) -> None:
    """Run every calibration batch through ``model`` in eval mode without grad.

    A batch is any layout :func:`torchslim.core.batches.call_model` reads (a tensor, positional
    inputs, ``(inputs, target)``, a dict of keyword inputs); targets are left out of the call.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches, "calibration", unit="batches"):
                call_model(model, batch, input_fn)
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
