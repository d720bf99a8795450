"""Find multi-head attention blocks with separate q/k/v projections, and fix their head counts after pruning.

Torch-Pruning removes whole heads from the ``query``/``key``/``value`` projections (and the matching
input channels of the output projection) when it is told how many heads each projection has. The
attention module itself keeps attributes such as ``num_attention_heads`` and ``all_head_size`` that
its ``forward`` may use, so they are patched afterwards; the patches are part of the pruning plan.

Supported layouts (matched by attribute names, so every Hugging Face model that uses them works):

- BERT family (BERT, RoBERTa, MiniLM, ...): ``query``/``key``/``value`` Linear children and integer
  ``num_attention_heads``, ``attention_head_size``, ``all_head_size``.
- LLaMA family (LLaMA, Mistral, Qwen2, ...): ``q_proj``/``k_proj``/``v_proj`` Linear children and an
  integer ``head_dim``; only without grouped-query attention (as many k/v heads as query heads).
- ``nn.MultiheadAttention`` (``nn.TransformerEncoder`` / ``Decoder``, ViT-style models): first replaced
  by an equal :class:`~torchslim.core.mha.PrunedMultiheadAttention` with separate q/k/v/out Linear
  layers (:func:`~torchslim.core.mha.split_attention_`), whose heads are then pruned like the ones above.

Example:
    >>> import torch.nn as nn
    >>> class Attn(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
    ...         self.num_attention_heads, self.attention_head_size, self.all_head_size = 2, 4, 8
    >>> [(s.path, s.num_heads) for s in find_attention(nn.Sequential(Attn()))]
    [('0', 2)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from torchslim.core.mha import PrunedMultiheadAttention, split_attention_, splittable

_BERT = ("query", "key", "value")
_LLAMA = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class HeadSpec:
    """One attention block: its path, its q/k/v projections, head count and head size."""

    path: str
    layout: str
    projections: tuple[nn.Linear, ...]
    num_heads: int
    head_size: int


def _linears(module: nn.Module, names: tuple[str, ...]) -> tuple[nn.Linear, ...] | None:
    mods = tuple(getattr(module, n, None) for n in names)
    return mods if all(isinstance(m, nn.Linear) for m in mods) else None  # type: ignore[return-value]


def find_attention(model: nn.Module) -> list[HeadSpec]:
    """Every attention block of a supported layout in ``model`` (see the module docstring)."""
    specs = []
    for path, module in model.named_modules():
        if isinstance(module, PrunedMultiheadAttention):
            projections = (module.q_proj, module.k_proj, module.v_proj)
            specs.append(
                HeadSpec(path, "mha", projections, module.q_proj.out_features // module.head_dim, module.head_dim)
            )
            continue
        bert = _linears(module, _BERT)
        size = getattr(module, "attention_head_size", None)
        if bert and isinstance(getattr(module, "num_attention_heads", None), int) and isinstance(size, int):
            specs.append(HeadSpec(path, "bert", bert, bert[0].out_features // size, size))
            continue
        llama = _linears(module, _LLAMA)
        head_dim = getattr(module, "head_dim", None)
        if llama and isinstance(head_dim, int) and head_dim > 0:
            heads = llama[0].out_features // head_dim
            if all(p.out_features == llama[0].out_features for p in llama):  # no grouped-query attention
                specs.append(HeadSpec(path, "llama", llama, heads, head_dim))
    return specs


def head_attrs(model: nn.Module, specs: list[HeadSpec]) -> dict[str, dict[str, Any]]:
    """The attribute values each attention block needs after its projections lost whole heads (since ``specs``).

    Example:
        >>> import torch.nn as nn
        >>> class Attn(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.query, self.key, self.value = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)
        ...         self.num_attention_heads, self.attention_head_size, self.all_head_size = 2, 4, 8
        >>> m = nn.Sequential(Attn())
        >>> head_attrs(m, [HeadSpec("0", "bert", (m[0].query,), 2, 4)])
        {'0': {'num_attention_heads': 1, 'all_head_size': 4}}
    """
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        module = model.get_submodule(spec.path) if spec.path else model
        width = (module.query if spec.layout == "bert" else module.q_proj).out_features
        heads = width // spec.head_size
        if spec.layout == "bert":
            attrs = {"num_attention_heads": heads, "all_head_size": width}
        else:  # LLaMA-style and PrunedMultiheadAttention derive shapes from head_dim; keep the counters consistent
            attrs = {
                n: heads for n in ("num_heads", "num_key_value_heads") if isinstance(getattr(module, n, None), int)
            }
        if heads != spec.num_heads and attrs:  # compared with the count before pruning (the spec's)
            out[spec.path] = attrs
    return out


__all__ = ["HeadSpec", "PrunedMultiheadAttention", "find_attention", "head_attrs", "split_attention_", "splittable"]
