"""Architecture adapters: rewrite layers that techniques cannot act on into equal ones they can, before any change.

Two layer kinds hide their matrices from torchslim's Linear-based techniques:

- Hugging Face's ``Conv1D`` (GPT-2, GPT-J-style blocks): ``y = x @ W + b`` with ``W`` stored
  ``[in, out]``, not a subclass of ``nn.Linear``. :func:`convert_conv1d_` replaces each selected one
  by a :class:`Conv1DLinear`, an ``nn.Linear`` computing exactly the same function whose
  ``state_dict`` keeps ``Conv1D``'s ``[in, out]`` layout (so a checkpoint written from it loads into
  the original architecture, and vice versa);
- ``nn.MultiheadAttention`` (and the ``nn.TransformerEncoderLayer`` fast path), which read their
  Linear weights without calling them: see :func:`torchslim.core.mha.unfuse_attention_`.

:func:`adapt_for_` runs both for a technique's selection. Every rewrite is recorded as a structure op
and replayed by ``ts.load`` before the weights are loaded.

Example:
    >>> import torch, torch.nn as nn
    >>> class Conv1D(nn.Module):  # the layout of transformers.pytorch_utils.Conv1D
    ...     def __init__(self, nf, nx):
    ...         super().__init__()
    ...         self.nf, self.weight, self.bias = nf, nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.randn(nf))
    ...     def forward(self, x):
    ...         return x @ self.weight + self.bias
    >>> m = nn.Sequential(Conv1D(3, 4))
    >>> x = torch.randn(2, 4)
    >>> ref = m(x)
    >>> convert_conv1d_(m, ["0"], kind="demo")
    ['0']
    >>> type(m[0]).__name__, tuple(m[0].weight.shape), tuple(m.state_dict()["0.weight"].shape)
    ('Conv1DLinear', (3, 4), (4, 3))
    >>> torch.allclose(m(x), ref, atol=1e-6)
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.batches import call_model
from torchslim.core.mha import unfuse_attention_
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.errors import UnsafeInputError

CONV1D_OP = "conv1d-linear"


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for a Hugging Face ``Conv1D`` (``weight [in, out]``, ``nf`` outputs), matched by name and layout."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


class Conv1DLinear(nn.Linear):
    """An ``nn.Linear`` equal to a Hugging Face ``Conv1D``; its ``state_dict`` keeps ``Conv1D``'s ``[in, out]`` weight.

    In memory the weight is ``[out, in]`` as for every Linear (so quantization, low-rank and pruning
    treat it as one); ``state_dict()`` writes it transposed and ``load_state_dict`` reads it back, so
    checkpoints stay interchangeable with the original ``Conv1D`` model.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.register_state_dict_post_hook(_save_transposed)
        self.register_load_state_dict_pre_hook(_load_transposed)

    @classmethod
    def from_conv1d(cls, conv: nn.Module) -> Conv1DLinear:
        """The same function as ``conv`` (weights copied exactly, same device / dtype / training mode)."""
        w = conv.weight
        new = cls(w.shape[0], w.shape[1], bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w.detach().t())
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach())
        new.weight.requires_grad_(w.requires_grad)
        return new.train(conv.training)


def _save_transposed(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    key = prefix + "weight"
    if isinstance(state.get(key), torch.Tensor) and state[key].dim() == 2:
        state[key] = state[key].t().contiguous()


def _load_transposed(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    key = prefix + "weight"
    if isinstance(state.get(key), torch.Tensor) and state[key].dim() == 2:
        state[key] = state[key].t()


def convert_conv1d_(model: nn.Module, paths: Iterable[str], *, kind: str, ctx: Any = None) -> list[str]:
    """Replace the Hugging Face ``Conv1D`` at each of ``paths`` by an equal :class:`Conv1DLinear`; their paths.

    Paths that are not a ``Conv1D`` are ignored. The conversion is recorded (one ``conv1d-linear``
    structure op) and noted in ``ctx.events``.
    """
    done = _convert(model, paths)
    if done:
        record_op(model, CONV1D_OP, {"paths": done})
        if ctx is not None:
            ctx.record(f"{kind}: {len(done)} Hugging Face Conv1D layer(s) rewritten as equal Linear layers")
    return done


def _convert(model: nn.Module, paths: Iterable[str]) -> list[str]:
    done = []
    for path in paths:
        module = model.get_submodule(path) if path else None
        if module is not None and is_hf_conv1d(module):
            replace_module_(model, path, Conv1DLinear.from_conv1d(module))
            done.append(path)
    return done


@register_replay(CONV1D_OP)
def _replay_conv1d(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    paths = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise UnsafeInputError(f"malformed {CONV1D_OP} op: {str(data)[:200]}")
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if module is None or not is_hf_conv1d(module):
            raise UnsafeInputError(f"{CONV1D_OP} op names {path!r}, not a Hugging Face Conv1D in this model")
    _convert(model, paths)  # replay_ops records the op
    return model


def adapt_for_(model: nn.Module, select: Select, *, kind: str, ctx: Any = None, swaps: bool = False) -> Select:
    """Before ``kind`` changes the layers ``select`` picks: make every one of them reachable; the selection to use.

    Selected Hugging Face ``Conv1D`` layers (selected as if they were ``nn.Linear``: a ``types`` filter
    must name ``Linear`` or ``Conv1D``) become :class:`Conv1DLinear`; then every
    ``nn.MultiheadAttention`` that would bypass a selected layer is split
    (:func:`~torchslim.core.mha.unfuse_attention_`).

    With ``swaps`` (the technique replaces layers by modules whose ``weight`` is not a float matrix:
    int8 / int4 codes, two low-rank factors) the returned selection also leaves out, with a note in
    ``ctx.events``, the layers a Hugging Face model keeps in float32 (``_keep_in_fp32_modules``, e.g.
    T5's ``wo``) and the layers whose ``weight`` the model reads from outside them
    (:func:`external_weight_reads`, e.g. ViT reads its patch projection's ``weight.dtype`` to cast the
    pixels): swapping those would change what the model computes around them.
    """
    as_linear = Select(include=select.include, exclude=select.exclude)
    linear_types = not select.types or {"Linear", "Conv1D"} & set(select.types)
    conv1d = [n for n, m in as_linear.modules(model) if linear_types and is_hf_conv1d(m)]
    convert_conv1d_(model, conv1d, kind=kind, ctx=ctx)
    unfuse_attention_(model, [n for n, _ in select.modules(model)], kind=kind, ctx=ctx)
    if not swaps:
        return select
    names = [n for n, m in select.modules(model) if n and getattr(m, "weight", None) is not None]
    keep = {n: "the model keeps it in float32 (_keep_in_fp32_modules)" for n in _fp32_modules(model, names)}
    batch = _one_batch(ctx)
    if batch is not None:
        for n in external_weight_reads(model, [n for n in names if n not in keep], batch):
            keep[n] = "the model reads its .weight directly"
    if not keep:
        return select
    if ctx is not None:
        ctx.record(
            f"{kind}: left {len(keep)} layer(s) in float: " + "; ".join(f"{n} ({why})" for n, why in keep.items())
        )
    return Select(
        include=select.include, exclude=(*select.exclude, *(f"^{re.escape(n)}$" for n in keep)), types=select.types
    )


def _fp32_modules(model: nn.Module, names: list[str]) -> list[str]:
    """The ``names`` a Hugging Face model lists in ``_keep_in_fp32_modules`` (matched on a name component)."""
    kept: list[str] = []
    for prefix, module in model.named_modules():
        patterns = getattr(module, "_keep_in_fp32_modules", None) or []
        for n in names:
            rel = n[len(prefix) + 1 :] if prefix and n.startswith(prefix + ".") else (n if not prefix else None)
            if rel is not None and set(patterns) & set(rel.split(".")) and n not in kept:
                kept.append(n)
    return kept


def _one_batch(ctx: Any) -> Any:
    if ctx is None:
        return None
    if getattr(ctx, "example_inputs", None) is not None:
        return ctx.example_inputs
    calibration = getattr(ctx, "calibration", None)
    return calibration[0] if calibration else None


def external_weight_reads(model: nn.Module, names: list[str], batch: Any) -> list[str]:
    """The ``names`` whose ``weight`` attribute is read from outside their own ``forward`` while ``model`` runs ``batch``.

    The model runs once in eval mode under ``torch.no_grad()`` (the inference fast paths included),
    each watched layer's class temporarily replaced by a subclass that notes such reads; everything
    is restored afterwards. Such a layer cannot be swapped for a module with another kind of weight.
    A batch the model cannot run finds nothing (the technique reports its own errors).

    Example:
        >>> class Peek(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         return self.b(self.a(x).to(self.b.weight.dtype))
        >>> external_weight_reads(Peek(), ["a", "b"], (torch.ones(1, 2),))
        ['b']
    """
    seen: list[str] = []
    watched = [(n, model.get_submodule(n)) for n in names]
    originals = [(m, m.__class__) for _, m in watched]
    for name, module in watched:
        module.__class__ = _watcher(module.__class__)
        module.__dict__["_ts_watch"] = (name, seen, [0])
    was_training = model.training
    try:
        with torch.no_grad():
            call_model(model.eval(), batch)
    except Exception:  # noqa: BLE001 - detection only: a model that fails here fails visibly in the technique
        pass
    finally:
        for module, cls in originals:
            module.__class__ = cls
            module.__dict__.pop("_ts_watch", None)
        model.train(was_training)
    return [n for n in names if n in seen]


_WATCHERS: dict[type, type] = {}


def _watcher(cls: type) -> type:
    """A subclass of ``cls`` noting reads of ``weight`` that happen outside its own ``forward``."""
    if cls not in _WATCHERS:

        def __getattribute__(self, attr):  # noqa: N807
            if attr == "weight":
                name, seen, depth = object.__getattribute__(self, "__dict__")["_ts_watch"]
                if not depth[0] and name not in seen:
                    seen.append(name)
            return super(sub, self).__getattribute__(attr)

        def forward(self, *args, **kwargs):
            depth = object.__getattribute__(self, "__dict__")["_ts_watch"][2]
            depth[0] += 1
            try:
                return super(sub, self).forward(*args, **kwargs)
            finally:
                depth[0] -= 1

        sub = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "forward": forward})
        _WATCHERS[cls] = sub
    return _WATCHERS[cls]
