"""The ``torch.compile`` backend of the compiled int8 models: Inductor with two CPU changes.

Both were measured on MiniLM (batch 32 × 128 tokens, 2 threads, ``Int8Dynamic(compile=True,
compute_dtype="bfloat16")``, ``torchslim bench minilm-stsb``) and belong to this backend only: other
models compiled in the same process keep Inductor's defaults.

- **bf16 attention as two matmuls.** PyTorch's CPU flash-attention kernel runs head size 32 far
  below the CPU's bf16 matmul speed (~14 ms per MiniLM layer under the profiler, where the two bf16
  batched matmuls alone take ~3 ms). For bf16 inputs with short sequences (at most ``MAX_SCORES``
  query × key positions) the kernel is decomposed into :func:`bf16_attention`: ``Q Kᵀ`` and ``P V``
  as bf16 batched matmuls (AVX-512 BF16 / AMX dot products), scale, mask and softmax in float32 in
  fused Inductor kernels (~8 ms per layer). The scores matrix is materialised, which is why long
  sequences keep the flash kernel. Applied only where the CPU has native bf16 dot products.
- **Realize element-wise chains earlier** (``realize_cpu_opcount_threshold`` 50 → 7). With the default,
  Inductor inlines the dequantize + bias + GELU chain into both the per-token max reduction and the
  quantize loop of the next int8 layer, computing ``erf`` twice per element. In two bench runs of the
  same code but this setting, the int8 row took 218 ms with it and 250 ms without (peers ~245 ms in both).

Example:
    >>> import torch, torch.nn.functional as F
    >>> q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    >>> out, _ = bf16_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    >>> bool((out.float() - F.scaled_dot_product_attention(q, k, v)).abs().max() < 0.05)
    True
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MAX_SCORES", "REALIZE_OPCOUNT", "bf16_attention", "int8_backend"]

MAX_SCORES = 512 * 512  # query × key positions up to which the materialised scores are used
REALIZE_OPCOUNT = 7


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
    s = scale if scale is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * s
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    out = torch.matmul(scores.softmax(-1).to(query.dtype), value)
    return out, scores.logsumexp(-1)


def _decompositions() -> dict[Any, Any]:
    from torch._inductor.decomposition import select_decomp_table

    table = dict(select_decomp_table())
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        table[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default] = bf16_attention
    return table


def int8_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """``torch.compile(backend=int8_backend)``: Inductor with the two changes in the module docstring."""
    import torch._functorch.config as functorch_config
    from torch._inductor.compile_fx import compile_fx

    # AOTAutograd's cache key does not cover a custom decomposition table: a graph compiled earlier
    # with the default table would be reused, so this backend does not read or write that cache.
    with functorch_config.patch(enable_autograd_cache=False):
        return compile_fx(
            gm,
            example_inputs,
            decompositions=_decompositions(),
            config_patches={"realize_cpu_opcount_threshold": REALIZE_OPCOUNT},
        )
