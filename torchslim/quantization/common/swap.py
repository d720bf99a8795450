"""Shared plumbing of the int8 and int4 techniques: pick the modules to swap, swap them, record it, replay it.

Every quantization transform swaps modules through :func:`swap_int8_` (or records its own swaps with
:func:`record_swaps`) as one ``int8-modules`` op ``{"modules": [[qualified_name, spec], ...]}``, each
spec from :func:`~torchslim.core.modspec.module_spec`; the replay builds each spec empty with
:func:`~torchslim.core.modspec.module_from_spec` (registered kinds only) at the same name on a fresh
model, so ``ts.load`` can fill it from safetensors. The op keeps its historical name for every family.

Example:
    >>> import torch.nn as nn
    >>> from torchslim.core.structure import replay_ops, structure_ops
    >>> from torchslim.quantization import Int8WeightOnlyLinear
    >>> m = nn.Sequential(nn.Linear(4, 4))
    >>> _ = swap_int8_(m, [("0", m[0])], lambda name, mod: Int8WeightOnlyLinear.from_float(mod), "demo", None)
    >>> fresh = replay_ops(nn.Sequential(nn.Linear(4, 4)), structure_ops(m))
    >>> type(fresh[0]).__name__
    'Int8WeightOnlyLinear'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from torchslim.core.adapters import adapt_for_
from torchslim.core.context import Context
from torchslim.core.modspec import module_from_spec, module_spec
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import record_foreign_layers, replace_module_
from torchslim.errors import UnsafeInputError, UnsupportedModelError
from torchslim.quantization.common.primitives import NonFiniteError

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
    done: list[tuple[str, nn.Module]] = []
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
        done.append((name, new))
    record_swaps(model, done)
    if ctx is not None:
        ctx.record(f"{kind}: quantized {len(done)} module(s)")
    return [n for n, _ in done]


def record_swaps(model: nn.Module, swapped: Iterable[tuple[str, nn.Module]]) -> None:
    """Record one ``int8-modules`` op for the ``(qualified_name, new_module)`` pairs swapped (none: nothing)."""
    done = [[name, module_spec(new)] for name, new in swapped]
    if done:
        record_op(model, "int8-modules", {"modules": done})


def split_targets(
    model: nn.Module, select: Select, kinds: tuple[type[nn.Module], ...], kind: str, ctx: Context
) -> list[tuple[str, nn.Module]]:
    """Selected modules torchslim can swap; selected Linear/Embedding it cannot are listed in ``ctx.events``.

    First (:func:`~torchslim.core.adapters.adapt_for_`): selected Hugging Face ``Conv1D`` layers become
    equal Linear layers, and an ``nn.MultiheadAttention`` that would bypass a swapped layer (its
    ``out_proj``, or the Linear layers of the ``nn.TransformerEncoderLayer`` it serves) is split into
    separate q/k/v/out Linear layers; those are then targets too.
    """
    select = adapt_for_(model, select, kind=kind, ctx=ctx, swaps=True)
    targets, skipped = [], []
    for name, module in select.modules(model):
        if swappable(module, kinds):
            targets.append((name, module))
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            skipped.append(name)
    if skipped:
        ctx.record(f"{kind}: skipped {len(skipped)} module(s) it cannot swap: {', '.join(skipped)}")
    record_foreign_layers(model, kind, ctx)
    return targets


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
            _check_spec_size(name, module_from_spec(spec), old)
        new = module_from_spec(spec)
        device = next((t.device for t in old.parameters()), None)
        replace_module_(model, name, new.to(device) if device is not None else new)
    return model
