"""Knowledge distillation: pure losses, feature taps, student builders and a DDP-ready trainer.

A big *teacher* trains a small *student*: on its softened outputs (Hinton et al. 2015), its features
(FitNets), hidden states and attention maps (TinyBERT, MiniLM) or sentence embeddings (Reimers &
Gurevych 2020). ``DistillConfig`` is also the recipe step ``kind: distill``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.distillation import DistillConfig, distill
    >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    >>> student = distill(nn.Linear(4, 2), nn.Linear(4, 2), lambda: [(x, y)], DistillConfig(epochs=1), progress=False)
"""

# Registers the recipe step ``kind: distill`` (a model-scope transform for DistillConfig).
from torchslim.distillation import step as _step  # noqa: F401
from torchslim.distillation.config import DistillConfig, LossTerm
from torchslim.distillation.losses import (
    LossSpec,
    attention_loss,
    ce_loss,
    cosine_loss,
    embedding_loss,
    get_loss,
    hidden_state_loss,
    kd_loss,
    loss_names,
    mse_loss,
    register_loss,
)
from torchslim.distillation.students import drop_blocks, find_blocks, keep_every_kth_block
from torchslim.distillation.taps import FeatureTaps
from torchslim.distillation.trainer import DistillRun, distill, train_distill

# The recipe-step name of DistillConfig (``kind: distill``).
Distill = DistillConfig

__all__ = [
    "Distill",
    "DistillConfig",
    "DistillRun",
    "FeatureTaps",
    "LossSpec",
    "LossTerm",
    "attention_loss",
    "ce_loss",
    "cosine_loss",
    "distill",
    "drop_blocks",
    "embedding_loss",
    "find_blocks",
    "get_loss",
    "hidden_state_loss",
    "kd_loss",
    "keep_every_kth_block",
    "loss_names",
    "mse_loss",
    "register_loss",
    "train_distill",
]
