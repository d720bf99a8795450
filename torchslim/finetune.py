"""``FineTune``: a recipe step that trains the model on the workload's data (recovers quality after pruning).

Example:
    >>> ft = FineTune(epochs=2, lr=1e-3)
    >>> ft.to_dict()["epochs"]
    2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from torchslim.core.config import Config, check_positive_int, check_range, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.errors import ConfigError


@register_config("finetune")
@dataclass(frozen=True)
class FineTune(Config):
    """Train the whole model with cross-entropy on ``ctx.train_data``.

    Args:
        epochs: passes over the training data.
        lr: peak AdamW learning rate (warm-up then cosine decay).
    """

    epochs: int = 3
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs")
        check_range(self, "lr", 0.0, 1.0, low_open=True)


@register_transform(FineTune, scope="model")
def _finetune(model: nn.Module, config: FineTune, select: Select, ctx: Context) -> nn.Module:
    from torchslim.training import fit_

    if ctx.train_data is None:
        raise ConfigError("finetune needs training data: give Context(train_data=...) or use a workload")
    return fit_(model, ctx.train_data, epochs=config.epochs, lr=config.lr, seed=ctx.seed, desc="fine-tuning")
