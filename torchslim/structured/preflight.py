"""Preflight for structural pruning: list every module the dependency graph cannot handle, before any change.

Torch-Pruning traces the model through autograd and prunes the layer types it has pruning functions
for. Everything else either works by accident or fails deep inside with an index error, so the
preflight refuses, all at once and by name:

- recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): their gates interleave four (three) weight
  blocks per hidden unit, and Torch-Pruning's LSTM support covers only single-layer, unidirectional
  LSTMs without projections; we refuse them all rather than corrupt one silently;
- leaf layers of a type with no pruning function that own a 2-D (or larger) parameter (e.g. GPT-2's
  ``Conv1D``, ``nn.Bilinear``): Torch-Pruning would guess the dimension to cut;
- layers that torchslim already swapped (quantized, ...) or that carry parametrizations (masks from
  unstructured pruning: bake them first), and TorchScript modules;
- rotary position embeddings (Hugging Face ``*RotaryEmbedding``, as in LLaMA): Torch-Pruning's graph
  tracing did not finish within minutes even on a one-layer, 32-wide LLaMA config (torch-pruning 1.6.1),
  so the model is refused rather than left hanging;
- a model that fails to run or trace on the example inputs.

Example:
    >>> import torch.nn as nn
    >>> unsupported_modules(nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)))
    ['1 (LSTM): recurrent layers are not supported by structural pruning']
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim.core.adapters import Conv1DLinear
from torchslim.core.select import is_compressed
from torchslim.errors import UnsupportedModelError

# Layer types Torch-Pruning has pruning functions for (torch_pruning.ops.module2type).
_KNOWN = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.Linear,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Embedding,
    nn.PReLU,
    nn.MultiheadAttention,
)


def unsupported_modules(model: nn.Module) -> list[str]:
    """Every module structural pruning cannot handle, as ``"path (Type): reason"`` lines (empty if none).

    Args:
        model: the model to check (not changed).

    Returns:
        One line per unsupported module, in ``named_modules`` order.
    """
    problems: list[str] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue  # reported through its parent already
        label = f"{name or '<root>'} ({type(module).__name__})"
        if isinstance(module, nn.RNNBase):
            problems.append(f"{label}: recurrent layers are not supported by structural pruning")
            inside.append(name)
        elif isinstance(module, torch.jit.ScriptModule):
            problems.append(f"{label}: TorchScript modules cannot be traced for pruning; use the Python model")
            inside.append(name)
        elif is_compressed(module):
            problems.append(f"{label}: already compressed by torchslim; prune before quantizing")
            inside.append(name)
        elif isinstance(module, Conv1DLinear):
            problems.append(
                f"{label}: a Hugging Face Conv1D (GPT-2) whose fused layouts structural pruning does not handle"
            )
        elif type(module).__name__.endswith("RotaryEmbedding"):
            problems.append(f"{label}: rotary position embeddings hang Torch-Pruning's dependency graph (LLaMA-style)")
            inside.append(name)
        elif parametrize.is_parametrized(module):
            problems.append(f"{label}: has parametrizations (pruning masks?); bake or remove them first")
        elif not isinstance(module, _KNOWN) and not any(True for _ in module.children()):
            big = [(n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]
            if big:
                shapes = ", ".join(f"{n} {list(s)}" for n, s in big)
                problems.append(f"{label}: layer type without a pruning function owns {shapes}")
    return problems


def preflight(model: nn.Module) -> None:
    """Raise UnsupportedModelError listing every unsupported module (see :func:`unsupported_modules`).

    The message's first line names the first problem (and how many more follow); the rest lists them all.

    Example:
        >>> import torch.nn as nn
        >>> preflight(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))
    """
    problems = unsupported_modules(model)
    if problems:
        more = f" (and {len(problems) - 1} more, listed below)" if len(problems) > 1 else ""
        listing = "".join(f"\n  - {p}" for p in problems) if len(problems) > 1 else ""
        raise UnsupportedModelError(f"structural pruning cannot handle this model: {problems[0]}{more}{listing}")
