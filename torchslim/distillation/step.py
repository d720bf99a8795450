"""The recipe step ``kind: distill``: distil ``ctx.teacher`` into the model on ``ctx.train_data``.

In a recipe, ``run_recipe`` gives the step a frozen copy of the input model as the teacher, so
"prune → distill → quantize" recovers the pruned model's quality from the model as it came in.

Example:
    >>> from torchslim.recipes import recipe_from_dict
    >>> recipe = recipe_from_dict({"steps": [{"kind": "distill", "epochs": 2, "alpha": 0.5}]})
    >>> recipe.steps[0].config.resolved_terms()[0].weight
    0.5
"""

from __future__ import annotations

import torch.nn as nn

from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.distillation.config import DistillConfig
from torchslim.distillation.trainer import train_distill
from torchslim.errors import ConfigError

__all__: list[str] = []


@register_transform(DistillConfig, scope="model")
def _distill_step(model: nn.Module, config: DistillConfig, select: Select, ctx: Context) -> nn.Module:
    """Distil ``ctx.teacher`` into ``model`` (whole model; ``select`` must be left empty).

    ``ctx.distill_eval``, when given, is the training's ``eval_fn`` (evaluations, early stopping, best weights).
    """
    if select != Select():
        raise ConfigError("distill trains the whole model; remove the step's select")
    if ctx.teacher is None:
        raise ConfigError(
            "distill needs a teacher: give Context(teacher=...), or run it in a recipe (run_recipe then uses "
            "a frozen copy of the input model)"
        )
    if ctx.train_data is None:
        raise ConfigError("distill needs training data: give Context(train_data=...) or use a workload")
    run = train_distill(
        model,
        ctx.teacher,
        ctx.train_data,
        config,
        eval_fn=ctx.distill_eval,
        seed=config.seed + ctx.seed,
        device=ctx.device,
    )
    if run.stopped_early:
        ctx.record(f"distill: stopped early after {run.steps} steps")
    return run.student
