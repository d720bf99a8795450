"""The one module walker: find selected modules and swap them in place.

Example:
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> _ = replace_module_(m, "1", nn.Tanh())
    >>> type(m[1]).__name__
    'Tanh'
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torch.nn.utils.parametrize import ParametrizationList

from torchslim.core.select import Select


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def replace_module_(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at qualified ``name`` inside ``model``; returns ``model``."""
    if not name:
        raise ValueError("cannot replace the root module in place; return a new model instead")
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name)
    setattr(parent, child, new)
    return model


def swap_modules_(
    model: nn.Module,
    select: Select,
    fn: Callable[[str, nn.Module], nn.Module | None],
) -> tuple[list[str], list[str]]:
    """Call ``fn(name, module)`` on every selected module; put back what it returns.

    ``fn`` returns a replacement, the module itself (changed in place), or ``None`` (not applicable).
    The list of targets is taken before any change, so swapped-in modules are never revisited, and a
    module inside one that was replaced is skipped.

    Returns:
        ``(changed, skipped)`` qualified names.
    """
    targets = list(select.modules(model))
    changed: list[str] = []
    skipped: list[str] = []
    replaced: list[str] = []
    for name, module in targets:
        if any(name.startswith(p + ".") for p in replaced):
            continue
        new = fn(name, module)
        if new is None:
            skipped.append(name)
            continue
        if new is not module:
            if name == "":
                raise ValueError("a module-scope transform cannot replace the root module")
            replace_module_(model, name, new)
            replaced.append(name)
        changed.append(name)
    return changed, skipped


# Layer types whose weights torchslim's techniques know how to read; anything else owning a matrix is "foreign".
_KNOWN_LAYERS = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


def foreign_weight_layers(model: nn.Module) -> list[str]:
    """Layers owning a weight matrix of a type techniques do not handle (LSTM, GRU, GPT-2 ``Conv1D``, ...).

    Torchslim's swaps and masks act on Linear / Conv / Embedding layers; these others stay as they are,
    which callers report in ``ctx.events``. Returned as ``"path (Type)"``, in ``named_modules`` order.

    Example:
        >>> foreign_weight_layers(nn.Sequential(nn.LSTM(4, 4), nn.Linear(4, 2)))
        ['0 (LSTM)']
    """
    found = []
    for name, module in model.named_modules():
        if getattr(module, "torchslim_compressed", False) or isinstance(module, _KNOWN_LAYERS):
            continue
        if isinstance(module, ParametrizationList) or ".parametrizations." in f".{name}.":
            continue  # the original weight of a masked (pruned) layer
        if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            found.append(f"{name or '<root>'} ({type(module).__name__})")
    return found


def record_foreign_layers(model: nn.Module, kind: str, ctx) -> None:
    """Note in ``ctx.events`` the layers of :func:`foreign_weight_layers` that ``kind`` leaves unchanged."""
    found = foreign_weight_layers(model)
    if found and ctx is not None:
        ctx.record(f"{kind}: left {len(found)} layer(s) of a type it does not handle unchanged: {', '.join(found)}")
