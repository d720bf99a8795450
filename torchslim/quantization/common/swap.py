"""Shared plumbing of the int8 techniques: swap selected modules, record the swap, replay it, compile.

Every int8 transform swaps modules through :func:`swap_int8_` and records one ``int8-modules`` op
``{"modules": [[qualified_name, spec], ...]}``; the replay builds each spec empty (allow-listed
classes only) at the same name on a fresh model, so ``ts.load`` can fill it from safetensors.

Example:
    >>> import torch.nn as nn
    >>> from torchslim.core.structure import replay_ops, structure_ops
    >>> from torchslim.quantization.modules import Int8WeightOnlyLinear
    >>> m = nn.Sequential(nn.Linear(4, 4))
    >>> _ = swap_int8_(m, [("0", m[0])], lambda name, mod: Int8WeightOnlyLinear.from_float(mod), "demo", None)
    >>> fresh = replay_ops(nn.Sequential(nn.Linear(4, 4)), structure_ops(m))
    >>> type(fresh[0]).__name__
    'Int8WeightOnlyLinear'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.context import Context
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.errors import UnsafeInputError, UnsupportedModelError
from torchslim.quantization.modules import empty_like_spec, module_spec
from torchslim.quantization.primitives import NonFiniteError

# nn.MultiheadAttention reads out_proj.weight directly instead of calling it: swapping it breaks MHA. Techniques
# split such attention first (torchslim.core.adapters.adapt_for_); this catches the ones that cannot be split.
_UNSWAPPABLE = ("NonDynamicallyQuantizableLinear",)


def swappable(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    """True for a plain instance of ``kinds`` that torchslim can replace (not MHA's ``out_proj``)."""
    return isinstance(module, kinds) and type(module).__name__ not in _UNSWAPPABLE


def swap_int8_(
    model: nn.Module,
    targets: Iterable[tuple[str, nn.Module]],
    make: Callable[[str, nn.Module], nn.Module | None],
    kind: str,
    ctx: Context | None,
) -> list[str]:
    """Replace each ``(name, module)`` of ``targets`` by ``make(name, module)`` (None: skip) and record it.

    Returns:
        The qualified names swapped.
    """
    done: list[list[Any]] = []
    for name, module in list(targets):
        try:
            new = make(name, module)
        except NonFiniteError:
            raise UnsupportedModelError(f"layer {name!r} has NaN/Inf weights; refusing to quantize it") from None
        if new is None:
            continue
        if name == "":
            raise UnsupportedModelError(f"{kind}: cannot swap the root module; select its children")
        replace_module_(model, name, new)
        done.append([name, module_spec(new)])
    if done:
        record_op(model, "int8-modules", {"modules": done})
    if ctx is not None:
        ctx.record(f"{kind}: quantized {len(done)} module(s)")
    return [n for n, _ in done]


def _check_spec_size(name: str, new: nn.Module, old: nn.Module) -> None:
    """UnsafeInputError when a replayed spec holds far more elements than the module it replaces (an int8 or
    int4 module holds its weight's elements at most, plus per-channel scales)."""
    have = sum(t.numel() for t in old.state_dict().values())
    want = sum(t.numel() for t in new.state_dict().values())
    if want > 2 * have + 4096:
        raise UnsafeInputError(f"int8-modules op: {name} claims {want} elements, the module it replaces holds {have}")


@register_replay("int8-modules")
def _replay_int8_modules(model: nn.Module, data: dict) -> nn.Module:
    for name, spec in data["modules"]:
        old = model.get_submodule(name)
        with torch.device("meta"):  # shapes only: a crafted spec must not allocate what it claims
            _check_spec_size(name, empty_like_spec(spec), old)
        new = empty_like_spec(spec)
        device = next((t.device for t in old.parameters()), None)
        replace_module_(model, name, new.to(device) if device is not None else new)
    return model


def compile_model_(model: nn.Module, dynamic: bool | None = None) -> nn.Module:
    """``model.compile()`` in place (Inductor fuses the int8 (de)quantize passes with their neighbours) and record it.

    The backend is :func:`~torchslim.quantization.compile_cpu.int8_backend` (Inductor with short bf16
    attention as matmuls and a one-pass softmax, earlier realization of element-wise chains, and the
    flash kernel's ``exp_u20`` on CPU). The weights and ``state_dict`` are untouched; a reloaded model
    is compiled again by the replay.
    """
    from torchslim.quantization.compile_cpu import int8_backend

    model.compile(dynamic=dynamic, backend=int8_backend)
    record_op(model, "int8-compile", {"dynamic": dynamic, "backend": "int8"})
    return model


@register_replay("int8-compile")
def _replay_compile(model: nn.Module, data: dict) -> nn.Module:
    from torchslim.quantization.compile_cpu import int8_backend

    dynamic = data.get("dynamic")
    # Artifacts saved before the int8 backend existed compile with Inductor's defaults, as they were measured.
    backend = int8_backend if data.get("backend") == "int8" else "inductor"
    model.compile(dynamic=dynamic if dynamic in (True, False) else None, backend=backend)
    return model
