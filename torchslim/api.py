"""``compress_``: the one dispatcher from a technique config to its registered transform.

Example:
    >>> import torch, torch.nn as nn
    >>> import torchslim as ts
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = ts.compress_(m, ts.CastDtype("bfloat16"))
    >>> m[0].weight.dtype
    torch.bfloat16
"""

from __future__ import annotations

from typing import TypeVar

import torch.nn as nn

from torchslim.core.config import Config
from torchslim.core.context import Context
from torchslim.core.inference import outside_inference_mode
from torchslim.core.registry import lookup
from torchslim.core.select import Select
from torchslim.core.walker import swap_modules_

M = TypeVar("M", bound=nn.Module)


def compress_(model: M, config: Config, *, select: Select | None = None, ctx: Context | None = None) -> M:
    """Apply the technique ``config`` to ``model`` in place and return the model.

    Args:
        model: the model to change.
        config: a registered technique config (e.g. ``CastDtype("bfloat16")``).
        select: which modules to touch; default: the config's ``default_select()`` or every module.
        ctx: example inputs, calibration data, teacher, ... that some techniques need.

    Returns:
        The compressed model (the same object, except for model-scope techniques that build a new one,
        such as distillation returning the student).

    Raises:
        RegistryError: no transform is registered for the config's type.
        UnsupportedModelError, ConfigError: raised by the transform for models or contexts it can't handle.

    The transform runs outside ``torch.inference_mode`` (the model's inference tensors, if it was built there,
    become ordinary tensors first), so calling it inside inference mode gives the same model.
    """
    transform = lookup(config)
    ctx = ctx if ctx is not None else Context()
    sel = select if select is not None else (config_default_select(config) or Select())
    # Under torch.inference_mode the buffers a transform makes would be inference tensors, whose writes in place
    # no version counter records (see torchslim.core.inference): the transform runs outside it.
    with outside_inference_mode(model):
        if transform.scope == "model":
            return transform.fn(model, config, sel, ctx)
        changed, skipped = swap_modules_(model, sel, lambda name, module: transform.fn(module, config, ctx))
    if not changed:
        ctx.record(f"{config.kind}: no selected module was changed")
    return model


def config_default_select(config: Config) -> Select | None:
    """The Select a technique uses when none is given (``default_select()`` on the config), or None."""
    fn = getattr(config, "default_select", None)
    return fn() if callable(fn) else None
