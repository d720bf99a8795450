"""Activation-aware channel importance: how much a channel contributes to the layers that read it.

Removing input channel *c* of a consumer layer ``y = W x`` deletes the term ``W_{:,c} x_c``; over
calibration data its size is bounded by ``‖W_{:,c}‖₂ · ‖X_c‖₂`` where ``‖X_c‖₂`` is the norm of channel
*c*'s activations over every token / pixel. This is the structured (whole-column) form of Wanda's score
``|W_ij| · ‖X_j‖₂`` (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
ICLR 2024). Unlike a pure weight norm it sees that some channels (attention heads, FFN neurons) are
rarely active. A group's score per channel is the mean over its consumers; groups without a measured
consumer fall back to Torch-Pruning's group L2 magnitude.

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> imp = ActivationNormImportance()
    >>> imp.collect(m, [(torch.randn(8, 4),)])
    >>> imp.stats[m[2]].shape
    torch.Size([3])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch_pruning.pruner import function
from torch_pruning.pruner.importance import GroupMagnitudeImportance

from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import run_calibration


class ActivationNormImportance(GroupMagnitudeImportance):
    """Torch-Pruning importance ``‖W_{:,c}‖₂ · ‖X_c‖₂`` over consumer layers (Linear, ungrouped Conv)."""

    def __init__(self) -> None:
        super().__init__(p=2, group_reduction="mean", normalizer="mean")
        self.stats: dict[nn.Module, torch.Tensor] = {}

    @torch.no_grad()
    def collect(self, model: nn.Module, batches: list[Any]) -> None:
        """Sum of squared input activations per channel of every Linear / Conv2d over ``batches``."""
        sums: dict[nn.Module, torch.Tensor] = {}

        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            # Linear: x [..., in] -> [in]; Conv2d: x [B, in, H, W] -> [in]
            sq = x.pow(2).reshape(-1, x.shape[-1]).sum(0) if isinstance(module, nn.Linear) else x.pow(2).sum((0, 2, 3))
            sums[module] = sums.get(module, 0) + sq

        layers = [
            m for m in model.modules() if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
        ]
        with forward_hooks(((m, hook) for m in layers), pre=True):
            run_calibration(model, batches)
        self.stats = {m: s.sqrt() for m, s in sums.items()}

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        scores, roots = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            if layer not in self.stats or fn not in (
                function.prune_linear_in_channels,
                function.prune_conv_in_channels,
            ):
                continue
            w = layer.weight.detach().float().transpose(0, 1).flatten(1)  # [in, out * kernel]
            act = self.stats[layer]
            if act.numel() != w.shape[0]:
                continue  # the layer changed since the statistics were taken
            scores.append((w.norm(dim=1) * act)[idxs])
            roots.append(group[i].root_idxs)
        if not scores:
            return super().__call__(group)
        return self._normalize(self._reduce(scores, roots), self.normalizer)
