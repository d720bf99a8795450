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
