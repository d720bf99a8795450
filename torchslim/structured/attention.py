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
  by an equal :class:`PrunedMultiheadAttention` with separate q/k/v/out Linear layers
  (:func:`split_attention_`), whose heads are then pruned like the ones above.

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

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UnsafeInputError

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


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate q/k/v/out Linear layers, so it can have fewer heads than ``embed_dim / head_dim``.

    Why a module of our own: ``nn.MultiheadAttention`` ties the attention width to ``embed_dim`` (its
    packed ``in_proj_weight`` is ``[3·E, E]``, ``head_dim = E // num_heads``, and ``kdim`` / ``vdim``
    only change the *input* width of the key and value), so "the same ``E`` with half the heads"
    cannot be expressed by it. Here ``q/k/v_proj`` map to ``num_heads · head_dim`` and ``out_proj``
    back to ``embed_dim``; the attention itself is ``F.scaled_dot_product_attention``. The forward
    signature, mask conventions (bool ``True`` = masked out, float = added), ``batch_first`` and
    returned ``(output, weights or None)`` are ``nn.MultiheadAttention``'s; ``bias_k`` / ``bias_v`` /
    ``add_zero_attn`` are not supported (such modules are left unsplit). ``in_proj_weight`` /
    ``in_proj_bias`` are ``None`` and ``_qkv_same_embed_dim`` is ``False``, which is what turns off
    ``nn.TransformerEncoderLayer``'s fused inference path (it reads the packed weights).

    Args:
        embed_dim: model width (input of ``q_proj``, output of ``out_proj``).
        num_heads: number of heads.
        head_dim: width of one head.
        kdim: input width of the key (default ``embed_dim``).
        vdim: input width of the value (default ``embed_dim``).
        bias: bias on ``q/k/v_proj``.
        out_bias: bias on ``out_proj``.
        dropout: dropout on the attention weights in training.
        batch_first: inputs are ``[batch, seq, feature]`` (else ``[seq, batch, feature]``).

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> split = PrunedMultiheadAttention.from_mha(mha)
        >>> torch.allclose(split(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
        True
    """

    _qkv_same_embed_dim = False  # see the class docstring: keeps nn.Transformer*'s fused path off
    in_proj_weight: torch.Tensor | None = None
    in_proj_bias: torch.Tensor | None = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """The same attention (all heads, weights copied exactly) as separate Linear layers."""
        if not splittable(mha):
            raise UnsafeInputError("nn.MultiheadAttention with bias_k/bias_v or add_zero_attn cannot be split")
        w = mha.out_proj.weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            mha.head_dim,
            kdim=mha.kdim,
            vdim=mha.vdim,
            bias=mha.in_proj_bias is not None,
            out_bias=mha.out_proj.bias is not None,
            dropout=mha.dropout,
            batch_first=mha.batch_first,
        ).to(device=w.device, dtype=w.dtype)
        if mha._qkv_same_embed_dim:  # packed [3E, E]: rows q, then k, then v
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        with torch.no_grad():
            for proj, weight, bias in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True):
                proj.weight.copy_(weight)
                proj.weight.requires_grad_(weight.requires_grad)
                if bias is not None:
                    proj.bias.copy_(bias)
                    proj.bias.requires_grad_(bias.requires_grad)
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
            for a, b in zip(new.out_proj.parameters(), mha.out_proj.parameters(), strict=True):
                a.requires_grad_(b.requires_grad)
        return new.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(output, weights)``, weights ``None`` unless ``need_weights``."""
        unbatched = query.dim() == 2  # [L, E]: one sequence
        if unbatched:
            query, key, value = query[None], key[None], value[None]
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
        # [B, L, H·d] -> [B, H, L, d]; the head count comes from the (possibly pruned) projection width
        q = self.q_proj(query).view(b, n_q, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, n_k, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, n_k, -1, self.head_dim).transpose(1, 2)
        if is_causal and attn_mask is None:  # as torch: is_causal is only a hint about attn_mask
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        causal = is_causal and key_padding_mask is None and not need_weights
        mask = None if causal else _merge_masks(attn_mask, key_padding_mask, b, q.shape[1], q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the explicit form, as nn.MultiheadAttention (SDPA does not return the weights)
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # [B, H, Lq, Lk]
            weights = F.dropout((scores if mask is None else scores + mask).softmax(-1), p)
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights[0] if unbatched else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n_q, -1))  # [B, Lq, H·d] -> [B, Lq, E]
        if unbatched:
            out = out[0]
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One additive float mask broadcastable to ``[B, H, Lq, Lk]`` (bool ``True`` = masked out -> ``-inf``)."""

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)  # [Lq, Lk], [1, Lq, Lk] or [B·H, Lq, Lk]
        if mask.dim() == 3:
            if mask.shape[0] not in (1, batch * heads):
                raise ValueError(
                    f"attn_mask of shape {tuple(attn_mask.shape)} does not match {batch} x {heads} heads "
                    "(after head pruning a per-head mask must have batch · remaining heads rows)"
                )
            mask = mask[None] if mask.shape[0] == 1 else mask.view(batch, heads, *mask.shape[1:])
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, -1)  # [B, Lk] -> [B, 1, 1, Lk]
        mask = padding if mask is None else mask + padding
    return mask


def splittable(module: nn.Module) -> bool:
    """True for an ``nn.MultiheadAttention`` that :class:`PrunedMultiheadAttention` can replace exactly."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and module.bias_k is None
        and module.bias_v is None
        and not module.add_zero_attn
    )


def split_attention_(model: nn.Module, paths: list[str] | tuple[str, ...]) -> nn.Module:
    """Replace the ``nn.MultiheadAttention`` at each path by an equal :class:`PrunedMultiheadAttention`; returns ``model``.

    An ``nn.TransformerEncoder`` holding one of them stops using nested tensors: its padded-input fast
    path reads ``self_attn.in_proj_weight`` of the first layer, which the split module does not have.

    Raises:
        UnsafeInputError: a path is not in the model or not a splittable ``nn.MultiheadAttention``.

    Example:
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1)
        >>> _ = split_attention_(enc, ["layers.0.self_attn"])
        >>> type(enc.layers[0].self_attn).__name__, enc.use_nested_tensor
        ('PrunedMultiheadAttention', False)
    """
    for path in paths:
        parent_name, _, leaf = path.rpartition(".") if isinstance(path, str) else ("", "", "")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            module = parent.get_submodule(leaf) if leaf else None
        except AttributeError:
            module = None
        if module is None or not splittable(module):
            raise UnsafeInputError(f"cannot split attention at {path!r}: not a plain nn.MultiheadAttention here")
        setattr(parent, leaf, PrunedMultiheadAttention.from_mha(module))  # type: ignore[arg-type]
    for encoder in model.modules():
        if isinstance(encoder, nn.TransformerEncoder) and any(
            isinstance(m, PrunedMultiheadAttention) for m in encoder.modules()
        ):
            encoder.use_nested_tensor = False
    return model
