"""``nn.MultiheadAttention`` as modules torchslim can swap: separate q/k/v/out Linear layers, called as modules.

PyTorch's ``nn.MultiheadAttention`` never calls its ``out_proj`` as a module: both its inference fast
path and ``F.multi_head_attention_forward`` read ``out_proj.weight`` and the packed ``in_proj_weight``
directly, and ``nn.TransformerEncoderLayer``'s fast path also reads ``linear1.weight`` /
``linear2.weight``. So a quantized, factorized or hooked Linear inside either is ignored or breaks
the forward (``self and mat2 must have the same dtype``; a calibration hook that never fires).

:class:`PrunedMultiheadAttention` is the same attention with ``q_proj`` / ``k_proj`` / ``v_proj`` /
``out_proj`` Linear children and ``F.scaled_dot_product_attention``; :func:`split_attention_` puts it
in place of an ``nn.MultiheadAttention`` with the weights copied exactly. :func:`unfuse_attention_` is
what techniques call first: it splits every attention module that would read one of the modules they
are about to change, and records a ``split-attention`` structure op so ``ts.load`` replays the split
before loading the weights.

Example:
    >>> from torchslim.core.structure import structure_ops
    >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1).eval()
    >>> unfuse_attention_(enc, ["layers.0.linear1"], kind="demo")
    ['layers.0.self_attn']
    >>> type(enc.layers[0].self_attn).__name__, [op["op"] for op in structure_ops(enc)]
    ('PrunedMultiheadAttention', ['split-attention'])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.modspec import register_spec_module
from torchslim.core.structure import record_op, register_replay
from torchslim.errors import UnsafeInputError, UnsupportedModelError

OP = "split-attention"


@register_spec_module
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

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec`."""
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "kdim": self.kdim,
            "vdim": self.vdim,
            "bias": self.q_proj.bias is not None,
            "out_bias": self.out_proj.bias is not None,
            "dropout": self.dropout,
            "batch_first": self.batch_first,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PrunedMultiheadAttention:
        """An empty (randomly initialised) module from :meth:`torchslim_spec`'s output."""
        ints = {k: int(spec[k]) for k in ("embed_dim", "num_heads", "head_dim", "kdim", "vdim")}
        flags = {k: bool(spec[k]) for k in ("bias", "out_bias", "batch_first")}
        return cls(**ints, **flags, dropout=float(spec["dropout"]))

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """The same attention (all heads, weights copied exactly) as separate Linear layers."""
        if not splittable(mha):
            raise UnsafeInputError("nn.MultiheadAttention with bias_k/bias_v or add_zero_attn cannot be split")
        w = mha.out_proj.weight
        spec = {
            "embed_dim": mha.embed_dim,
            "num_heads": mha.num_heads,
            "head_dim": mha.head_dim,
            "kdim": mha.kdim,
            "vdim": mha.vdim,
            "bias": mha.in_proj_bias is not None,
            "out_bias": mha.out_proj.bias is not None,
            "dropout": mha.dropout,
            "batch_first": mha.batch_first,
        }
        new = cls.from_spec(spec).to(device=w.device, dtype=w.dtype)
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


def _blocking(model: nn.Module) -> list[tuple[str, nn.MultiheadAttention, str | None]]:
    """Every ``nn.MultiheadAttention``: ``(path, module, path of the TransformerEncoderLayer it serves or None)``."""
    found = []
    for path, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoderLayer) and isinstance(module.self_attn, nn.MultiheadAttention):
            found.append((f"{path}.self_attn" if path else "self_attn", module.self_attn, path))
    seen = {p for p, _, _ in found}
    for path, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and path not in seen:
            found.append((path, module, None))
    return found


def _under(name: str, prefix: str | None) -> bool:
    if prefix is None:
        return False
    return name == prefix or not prefix or name.startswith(prefix + ".")


def unfuse_attention_(model: nn.Module, names: Iterable[str], *, kind: str, ctx: Any = None) -> list[str]:
    """Split every ``nn.MultiheadAttention`` that would bypass a change to the modules at ``names``; their paths.

    An attention module is split (see :func:`split_attention_`) when one of ``names`` is the module or
    inside it (its ``out_proj``), or is inside the ``nn.TransformerEncoderLayer`` whose ``self_attn``
    it is (that layer's fused inference path reads ``linear1`` / ``linear2`` weights too, and is only
    taken while ``self_attn`` is an ``nn.MultiheadAttention``). The split is recorded as one
    ``split-attention`` structure op, replayed by ``ts.load``, and listed in ``ctx.events``.

    Args:
        model: changed in place.
        names: qualified names of the modules the technique is about to swap, hook or rewrite.
        kind: the technique's name, for messages.
        ctx: a :class:`~torchslim.core.context.Context` (or anything with ``record``), or ``None``.

    Raises:
        UnsupportedModelError: an encoder layer's attention uses ``bias_k`` / ``bias_v`` /
            ``add_zero_attn`` (cannot be split) while one of its layers is to be changed.
    """
    names = list(names)
    paths: list[str] = []
    for path, mha, layer in _blocking(model):
        if not any(_under(n, path) or _under(n, layer) for n in names):
            continue
        if splittable(mha):
            paths.append(path)
        elif layer is not None:
            raise UnsupportedModelError(
                f"{kind}: the nn.TransformerEncoderLayer at {layer or '<root>'!r} uses an attention with "
                "bias_k/bias_v or add_zero_attn, whose fused inference path torchslim cannot rewrite; "
                f"exclude it with Select(exclude=[{('^' + layer) if layer else '.'!r}])"
            )
    if not paths:
        return []
    split_attention_(model, paths)
    record_op(model, OP, {"paths": paths})
    if ctx is not None:
        ctx.record(
            f"{kind}: {len(paths)} nn.MultiheadAttention module(s) rewritten with separate q/k/v/out Linear "
            "layers so they can be changed: " + ", ".join(paths)
        )
    return paths


@register_replay(OP)
def _replay_split(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    paths = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise UnsafeInputError(f"malformed {OP} op: {str(data)[:200]}")
    return split_attention_(model, paths)
