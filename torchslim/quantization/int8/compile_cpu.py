"""The ``torch.compile`` backend of the compiled int8 models: Inductor with three CPU changes.

The changes belong to this backend only (other models compiled in the same process keep Inductor's
defaults); :func:`compile_model_` compiles a model with it and records that, so ``ts.load`` compiles
the reloaded model again.

- **bf16 attention as two matmuls.** For bf16 inference with short sequences (at most ``MAX_SCORES``
  query × key positions) and no dropout, causal flag or grouped-query heads, Inductor's CPU
  flash-attention kernel (Dao et al., 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention
  with IO-Awareness") is replaced by :func:`bf16_attention`: ``Q Kᵀ`` and ``P V`` as bf16 batched
  matmuls, the scale, mask and softmax in float32 in one fused kernel per layer. Only the bf16 scores
  and the bf16 probabilities are stored; longer sequences keep the flash kernel. Applied only where
  the CPU has native bf16 dot products (AVX-512 BF16 or AMX); small head sizes run far below the
  CPU's matmul throughput in the flash kernel.
- **Realize element-wise chains earlier** (``realize_cpu_opcount_threshold`` 50 → ``REALIZE_OPCOUNT``).
  With the default, Inductor inlines a dequantize + bias + GELU chain into both the per-token max
  reduction and the quantize loop of the next int8 layer, computing ``erf`` twice per element; the
  lower threshold stores the chain's output once.
- **``exp`` as ``exp_u20``** in the vectorised C++ kernels: the 20-ULP exponential (relative error
  about 1e-6, the one PyTorch's own CPU flash-attention softmax uses) in place of Sleef's 1-ULP one,
  for a softmax bound by ``exp``. Applied only while this backend generates code; its graphs bypass
  the FX graph cache, whose key does not see the change.

Example:
    >>> import torch, torch.nn.functional as F
    >>> q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    >>> out, _ = bf16_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    >>> bool((out.float() - F.scaled_dot_product_attention(q, k, v)).abs().max() < 0.05)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.structure import record_op, register_replay

__all__ = [
    "CONFIG_PATCHES",
    "MAX_SCORES",
    "REALIZE_OPCOUNT",
    "bf16_attention",
    "compile_model_",
    "exp_u20",
    "int8_backend",
]

MAX_SCORES = 512 * 512  # query × key positions up to which the bf16 scores and probabilities are stored
REALIZE_OPCOUNT = 7
CONFIG_PATCHES = {"realize_cpu_opcount_threshold": REALIZE_OPCOUNT, "fx_graph_cache": False}


def bf16_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> Any:
    """``softmax(Q Kᵀ · scale + mask) V`` with bf16 matmuls and a float32 softmax; ``(out, logsumexp)``.

    The signature and outputs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (``[B, H, Lq, D]``
    and the float32 ``[B, H, Lq]`` log-sum-exp, which Inductor drops when unused). Returns
    ``NotImplemented`` (keep the flash kernel) for anything but bf16 inference without dropout or a
    causal flag, or for sequences past ``MAX_SCORES``.
    """
    lq, lk = query.shape[-2], key.shape[-2]
    if (
        query.dtype != torch.bfloat16
        or key.dtype != torch.bfloat16
        or value.dtype != torch.bfloat16
        or dropout_p
        or is_causal
        or query.requires_grad
        or bool(lq * lk > MAX_SCORES)  # symbolic lengths: a guard, recompiling past the bound
        or query.shape[-3] != key.shape[-3]  # grouped-query attention: left to the kernel
    ):
        return NotImplemented
    from torch._inductor import inductor_prims  # noqa: F401  (registers prims.inductor_force_stride_order)

    s = scale if scale is not None else query.shape[-1] ** -0.5
    raw = torch.matmul(query, key.transpose(-1, -2))  # bf16 [..., Lq, Lk]
    shape = raw.shape
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = torch.where(attn_mask, 0.0, float("-inf"))
        else:
            mask = attn_mask.float().contiguous()
        # Stored once per layer (a [B, 1, Lq, Lk] float buffer), so that the scores below stay a
        # few loads and adds that Inductor computes inside each reduction instead of storing them.
        mask = torch.ops.prims.inductor_force_stride_order(mask, mask.stride())
        mask = mask.expand(shape).reshape(-1, lk)

    def scores() -> torch.Tensor:
        # Written out at each use on purpose: one FX node per consumer, so Inductor recomputes the
        # cheap scale + mask in the max pass and in the exp pass rather than storing a float32
        # [B, H, Lq, Lk] tensor between them (25 MB per MiniLM layer at batch 32 × 128).
        x = raw.float().view(-1, lk) * s
        return x + mask if mask is not None else x

    row_max = scores().amax(-1, keepdim=True)
    e = (scores() - row_max).exp()
    total = e.sum(-1, keepdim=True)
    out = torch.matmul((e / total).to(query.dtype).view(shape), value)
    return out, (row_max + total.log()).view(shape[:-1])


def _decompositions() -> dict[Any, Any]:
    from torch._inductor.decomposition import select_decomp_table

    table = dict(select_decomp_table())
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        table[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default] = bf16_attention
    return table


@contextlib.contextmanager
def exp_u20() -> Iterator[None]:
    """While open, Inductor's vectorised C++ code computes ``exp(x)`` as ``x.exp_u20()`` (see module docstring)."""
    from torch._inductor.codegen.cpp import CppVecOverrides

    original = CppVecOverrides.__dict__.get("exp")
    if not isinstance(original, staticmethod):  # a torch whose code generator changed: leave it be
        yield
        return
    CppVecOverrides.exp = staticmethod(lambda x: f"{x}.exp_u20()")
    try:
        yield
    finally:
        CppVecOverrides.exp = original


def int8_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """``torch.compile(backend=int8_backend)``: Inductor with the three changes in the module docstring."""
    import torch._functorch.config as functorch_config
    from torch._inductor.compile_fx import compile_fx

    # The AOTAutograd and FX graph caches key on the graph and the config, not on a custom
    # decomposition table or on the code generator's exp: a graph compiled earlier without them
    # would be reused (or ours served to a plain compile), so this backend uses neither cache.
    # Compiled C++ kernels are still cached, keyed on their source.
    with functorch_config.patch(enable_autograd_cache=False), exp_u20():
        return compile_fx(
            gm,
            example_inputs,
            decompositions=_decompositions(),
            config_patches=CONFIG_PATCHES,
        )


def compile_model_(model: nn.Module, dynamic: bool | None = None) -> nn.Module:
    """``model.compile()`` in place (Inductor fuses the int8 (de)quantize passes with their neighbours) and record it.

    The backend is :func:`int8_backend` (Inductor with short bf16
    attention as matmuls and a one-pass softmax, earlier realization of element-wise chains, and the
    flash kernel's ``exp_u20`` on CPU). The weights and ``state_dict`` are untouched; a reloaded model
    is compiled again by the replay.
    """
    model.compile(dynamic=dynamic, backend=int8_backend)
    record_op(model, "int8-compile", {"dynamic": dynamic, "backend": "int8"})
    return model


@register_replay("int8-compile")
def _replay_compile(model: nn.Module, data: dict) -> nn.Module:
    dynamic = data.get("dynamic")
    # Artifacts saved before the int8 backend existed compile with Inductor's defaults, as they were measured.
    backend = int8_backend if data.get("backend") == "int8" else "inductor"
    model.compile(dynamic=dynamic if dynamic in (True, False) else None, backend=backend)
    return model
