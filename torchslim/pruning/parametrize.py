"""Masks through ``torch.nn.utils.parametrize``: ``weight = original ⊙ mask``, and ``bake_`` to make them permanent.

The original Parameter object is kept (as ``parametrizations.weight.original``), so optimizers built
before pruning keep working; the effective weight is zero wherever the mask is, whatever an optimizer
step does to the original.

Example:
    >>> import torch, torch.nn as nn
    >>> lin = nn.Linear(4, 2)
    >>> apply_mask_(lin, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
    >>> int((lin.weight == 0).sum())
    4
    >>> _ = bake_(lin)
    >>> is_masked(lin)
    False
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize


class WeightMask(nn.Module):
    """Parametrization multiplying the weight by a fixed bool mask (a buffer, so it moves with ``.to``)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool), persistent=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, WeightMask) for p in module.parametrizations[name]
    )


def current_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    if not is_masked(module, name):
        return None
    return next(p.mask for p in module.parametrizations[name] if isinstance(p, WeightMask))


def apply_mask_(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Mask ``module.<name>`` (replacing an earlier mask); the original's masked entries are zeroed too,
    so a later ``bake_`` and the artifact see exact zeros."""
    if mask.shape != getattr(module, name).shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {name} shape {tuple(getattr(module, name).shape)}")
    if is_masked(module, name):
        for p in module.parametrizations[name]:
            if isinstance(p, WeightMask):
                p.mask.copy_(mask.to(p.mask.device))
        original = module.parametrizations[name].original
    else:
        parametrize.register_parametrization(module, name, WeightMask(mask.to(getattr(module, name).device)))
        original = module.parametrizations[name].original
    with torch.no_grad():
        original.mul_(mask.to(original.device, original.dtype))


def bake_(model: nn.Module) -> nn.Module:
    """Make every mask permanent: plain ``weight`` Parameters holding the zeros; returns ``model``."""
    for module in model.modules():
        for name in list(getattr(module, "parametrizations", {}) or {}):
            if is_masked(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model
