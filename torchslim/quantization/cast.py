"""Cast a model's floating-point weights to bf16/fp16 (half the bytes, faster where the CPU has bf16).

Inputs are cast to the new dtype by a pre-hook on the root, and floating outputs back to float32 by a
forward hook, so callers keep feeding and receiving float32 tensors.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Linear(4, 2)
    >>> _ = compress_(m, CastDtype("bfloat16"))
    >>> m(torch.ones(1, 4)).dtype
    torch.float32
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from torchslim.core.config import Config, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@register_config("cast-dtype")
@dataclass(frozen=True)
class CastDtype(Config):
    """Store and run floating-point weights in a 16-bit dtype.

    Args:
        dtype: ``"bfloat16"`` (fast on CPUs with AVX-512 bf16) or ``"float16"``.
    """

    dtype: Literal["bfloat16", "float16"] = "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            from torchslim.core.config import fail

            fail(self, "dtype", f"must be 'bfloat16' or 'float16', got {self.dtype!r}")


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    return tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, value)


def _add_cast_hooks(module: nn.Module, dtype: torch.dtype) -> None:
    pre = module.register_forward_pre_hook(
        lambda mod, args, kwargs: (_cast_floats(args, dtype), kwargs), with_kwargs=True
    )
    post = module.register_forward_hook(lambda mod, args, out: _cast_floats(out, torch.float32))
    module._torchslim_cast_hooks = (pre, post)


def remove_cast_hooks(module: nn.Module) -> None:
    """Remove the dtype-boundary hooks CastDtype put on ``module`` (e.g. after upcasting its weights)."""
    for handle in getattr(module, "_torchslim_cast_hooks", ()):
        handle.remove()
    module._torchslim_cast_hooks = ()


@register_transform(CastDtype, scope="model")
def _cast_model(model: nn.Module, config: CastDtype, select: Select, ctx: Context) -> nn.Module:
    names = [name for name, _ in select.modules(model)]
    record_op(model, "cast-dtype", {"dtype": config.dtype, "modules": names})
    return _cast_named(model, config.dtype, names)


@register_replay("cast-dtype")
def _replay_cast(model: nn.Module, data: dict) -> nn.Module:
    return _cast_named(model, data["dtype"], list(data["modules"]))


def _cast_named(model: nn.Module, dtype_name: str, names: list[str]) -> nn.Module:
    dtype = _DTYPES[dtype_name]
    selected = [(name, model.get_submodule(name)) for name in names]
    whole = "" in names
    for _name, module in selected:
        # Only the module's own tensors, so children excluded by ``select`` keep theirs.
        own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
        for p in own:
            p.data = p.data.to(dtype)
        for bname, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                setattr(module, bname, b.to(dtype))
        # A partial cast puts the dtype boundary around each cast module; a whole-model cast only at the root.
        if own and not whole and not getattr(module, "_torchslim_cast_dtype", None):
            _add_cast_hooks(module, dtype)
            module._torchslim_cast_dtype = dtype_name
    if whole and not getattr(model, "_torchslim_cast_dtype", None):
        _add_cast_hooks(model, dtype)
        model._torchslim_cast_dtype = dtype_name
    if whole:
        # Compressed modules keep their own (int8) storage, but the floats they hand on should be in the
        # model's dtype: an int8 embedding returning float32 would promote every later layer back to it.
        for module in model.modules():
            if hasattr(module, "output_dtype"):
                module.output_dtype = dtype
    return model
