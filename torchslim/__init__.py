"""torchslim: make trained PyTorch models smaller and faster while keeping their quality.

Example:
    >>> import torch, torch.nn as nn
    >>> import torchslim as ts
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> ctx = ts.Context(example_inputs=(torch.zeros(1, 8),))
    >>> before = ts.measure(model, ctx, latency_runs=2)
    >>> _ = ts.compress_(model, ts.CastDtype("bfloat16"), ctx=ctx)
    >>> ts.measure(model, ctx, latency_runs=2).size_bytes < before.size_bytes
    True
"""

from __future__ import annotations

from torchslim.api import compress_
from torchslim.core import Config, Context, Select, config_from_dict, register_config, register_transform
from torchslim.distillation import Distill, DistillConfig, LossTerm, distill
from torchslim.errors import (
    ConfigError,
    OutputExistsError,
    QualityGateError,
    TorchslimError,
    UnsafeInputError,
    UnsupportedModelError,
    UsageError,
)
from torchslim.finetune import FineTune
from torchslim.integrations import install as _install_integrations
from torchslim.io import load, save
from torchslim.measure import Report, measure
from torchslim.pruning import (
    GradualPruning,
    MagnitudePruning,
    NMPruning,
    RandomPruning,
    SparseGPTPruning,
    WandaPruning,
    bake_,
)
from torchslim.quantization import (
    CastDtype,
    Int4Embedding,
    Int4WeightOnly,
    Int4WeightOnlyLinear,
    Int8Dynamic,
    Int8DynamicLinear,
    Int8Embedding,
    Int8QAT,
    Int8Static,
    Int8StaticConv2d,
    Int8StaticLinear,
    Int8WeightOnly,
    Int8WeightOnlyLinear,
    MixedPrecision,
    PerChannel,
    PerTensor,
)
from torchslim.recipes import Recipe, RunReport, Step, load_recipe, recipe_from_dict, run_recipe
from torchslim.structured import ChannelPruning, FoldBatchNorm, LayerDropping, LowRank, PruningPlan
from torchslim.tuning import SearchSpace, TuneOptions, sensitivity, tune
from torchslim.version import __version__

_install_integrations()  # lazy: transformers' from_pretrained learns quant_method "torchslim" when it loads

__all__ = [
    "bake_",
    "WandaPruning",
    "SparseGPTPruning",
    "RandomPruning",
    "NMPruning",
    "MagnitudePruning",
    "GradualPruning",
    "CastDtype",
    "ChannelPruning",
    "Distill",
    "DistillConfig",
    "Int4Embedding",
    "Int4WeightOnly",
    "Int4WeightOnlyLinear",
    "Int8Dynamic",
    "MixedPrecision",
    "Int8DynamicLinear",
    "Int8Embedding",
    "Int8QAT",
    "Int8Static",
    "Int8StaticConv2d",
    "Int8StaticLinear",
    "Int8WeightOnly",
    "Int8WeightOnlyLinear",
    "LayerDropping",
    "LossTerm",
    "LowRank",
    "PerChannel",
    "PerTensor",
    "PruningPlan",
    "SearchSpace",
    "sensitivity",
    "TuneOptions",
    "tune",
    "distill",
    "Config",
    "ConfigError",
    "Context",
    "FineTune",
    "FoldBatchNorm",
    "OutputExistsError",
    "QualityGateError",
    "Recipe",
    "Report",
    "RunReport",
    "Select",
    "Step",
    "TorchslimError",
    "UnsafeInputError",
    "UnsupportedModelError",
    "UsageError",
    "__version__",
    "compress_",
    "config_from_dict",
    "load",
    "load_recipe",
    "measure",
    "recipe_from_dict",
    "register_config",
    "register_transform",
    "run_recipe",
    "save",
]
