"""Gradual magnitude pruning with fine-tuning (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity rises along the cubic schedule s_t = s_f + (s_i − s_f)(1 − t/n)³ over ``steps`` pruning
events; after each, the model trains ``epochs_per_step`` epochs with the masks in place (masked
weights get no effective update), then ``final_epochs`` more at the final sparsity; masks are baked
at the end.

Example:
    >>> GradualPruning(final_sparsity=0.9, steps=4).schedule()
    [0.5203125, 0.7875, 0.8859375, 0.9]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn

from torchslim.core.config import check_fraction, check_positive_int, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.search import searchable
from torchslim.core.select import Select
from torchslim.errors import ConfigError
from torchslim.pruning.masks import cubic_sparsity, global_masks, magnitude_score, topk_mask
from torchslim.pruning.parametrize import apply_mask_, bake_
from torchslim.pruning.unstructured import SPARSITY, _Pruning, adapted_layers


@register_config("gradual-pruning")
@dataclass(frozen=True)
class GradualPruning(_Pruning):
    """Cubic-schedule magnitude pruning interleaved with fine-tuning on ``ctx.train_data``.

    Args:
        final_sparsity: sparsity reached at the last pruning step.
        initial_sparsity: sparsity of the schedule's start (t = 0).
        steps: pruning events (t = 1..steps).
        epochs_per_step: fine-tuning epochs after each pruning event.
        final_epochs: fine-tuning epochs at the final sparsity.
        lr: peak learning rate of each fine-tuning phase.
        scope: ``"global"`` or ``"layer"`` ranking.
    """

    final_sparsity: float = searchable(0.9, SPARSITY)
    initial_sparsity: float = 0.0
    steps: int = 4
    epochs_per_step: int = 2
    final_epochs: int = 4
    lr: float = 1e-3
    scope: Literal["global", "layer"] = "global"
    keep_first_last: bool = True

    def __post_init__(self) -> None:
        check_fraction(self, "final_sparsity")
        check_fraction(self, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            fail(self, "initial_sparsity", "must not exceed final_sparsity")
        check_positive_int(self, "steps")
        check_positive_int(self, "epochs_per_step")
        if not isinstance(self.final_epochs, int) or self.final_epochs < 0:
            fail(self, "final_epochs", f"must be a non-negative integer, got {self.final_epochs!r}")
        check_range(self, "lr", 0.0, 1.0, low_open=True)

    def schedule(self) -> list[float]:
        """The sparsity after each pruning event."""
        return [
            cubic_sparsity(t, self.steps, self.initial_sparsity, self.final_sparsity) for t in range(1, self.steps + 1)
        ]


@register_transform(GradualPruning, scope="model")
def _gradual(model: nn.Module, config: GradualPruning, select: Select, ctx: Context) -> nn.Module:
    from torchslim.training import fit_

    if ctx.train_data is None:
        raise ConfigError("gradual-pruning fine-tunes between steps: give Context(train_data=...) or use a workload")
    # Split nn.MultiheadAttention into q/k/v/out Linear layers (and the like) first, so they are pruned too.
    layers = adapted_layers(model, select, config, ctx)
    for t, sparsity in enumerate(config.schedule(), start=1):
        # Scores from the effective (masked) weights: pruned weights are 0 and stay pruned.
        scores = {n: magnitude_score(m.weight) for n, m in layers.items()}
        if config.scope == "global":
            masks = global_masks(scores, sparsity)
        else:
            masks = {n: topk_mask(s, sparsity) for n, s in scores.items()}
        for n, mask in masks.items():
            apply_mask_(layers[n], mask)
        fit_(
            model,
            ctx.train_data,
            epochs=config.epochs_per_step,
            lr=config.lr,
            seed=ctx.seed + t,
            desc=f"prune {sparsity:.0%}",
        )
        ctx.record(f"gradual-pruning: step {t}/{config.steps} at {sparsity:.1%}")
    if config.final_epochs:
        fit_(model, ctx.train_data, epochs=config.final_epochs, lr=config.lr, seed=ctx.seed, desc="final fine-tune")
    bake_(model)
    return model
