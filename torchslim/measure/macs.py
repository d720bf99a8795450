"""Multiply-accumulate counts through ``torch.utils.flop_counter``.

PyTorch's counter knows the float matmuls and convolutions; the low-bit kernels our quantized modules
call (``torch._int_mm``, the int8/int4 weight-only matmuls, oneDNN's int8 convolution, torchslim's own C++
int8 convolution and W4A8 linear) are taught to it
below, so a quantized model reports the MACs it really does instead of 0. So are the fused CPU
attention kernels it counts as 0 (torch 2.13): ``scaled_dot_product_attention``'s CPU flash kernel, and
the inference fast paths of ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``, which count
their projections and FFN too (padded batches as nested tensors: the real tokens only).

Example:
    >>> import torch, torch.nn as nn
    >>> count_macs(nn.Linear(10, 5, bias=False), (torch.zeros(1, 10),))
    50
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim.core.batches import batch_size_of, call_model


def _matmul_flops(x_shape: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    """``[..., K] @ -> [..., N]``: 2·M·K·N FLOPs, M·N read from the output and K from the input."""
    return 2 * math.prod(out_shape) * int(x_shape[-1])


def _qconv_flops(x_shape: Any, _xs: Any, _xz: Any, w_shape: Any, *args: Any, out_shape: Any = None, **__: Any) -> int:
    """oneDNN int8 conv: 2 · output elements · (C_in / groups · kernel area)."""
    groups = int(args[6]) if len(args) > 6 and isinstance(args[6], int) else 1
    if w_shape is not None and len(w_shape) == 4:  # the packed weight keeps [C_out, C_in/groups, kh, kw]
        per_output = int(w_shape[1]) * int(w_shape[2]) * int(w_shape[3])
    else:
        per_output = int(x_shape[1]) // groups
    return 2 * math.prod(out_shape) * per_output


def _qconv1x1_flops(x_shape: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    """torchslim's int8 1×1 convolution: 2 · output elements · input channels (on im2col rows, kh·kw·C_in)."""
    return 2 * math.prod(out_shape) * int(x_shape[1])


def _qdwconv_flops(*args: Any, out_shape: Any = None, **__: Any) -> int:
    """torchslim's int8 depthwise convolution: 2 · output elements · taps (``kh·kw``, its ``kernel`` argument)."""
    return 2 * math.prod(out_shape) * math.prod(int(k) for k in args[7])


def _sdpa_cpu_flops(q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    """``[B, H, L, E] · [B, H, S, E]ᵀ`` then ``· [B, H, S, Ev]``: 2·B·H·L·S·(E + Ev)."""
    return 2 * math.prod(q[:-1]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))


def _lengths(x: torch.Tensor) -> list[int]:
    """Sequence lengths of a batch-first ``[B, L, E]`` tensor, or of a nested tensor's components."""
    if x.is_nested:
        return [int(n) for n in x._nested_tensor_size()[:, 0].tolist()]
    return [int(x.shape[-2])] * (math.prod(x.shape[:-2]) if x.dim() > 2 else 1)


def _attention_flops(q: torch.Tensor, k: torch.Tensor, embed_dim: int) -> int:
    """Multi-head attention with its four ``E × E`` projections (heads together span ``E``)."""
    lq, lk = _lengths(q), _lengths(k)
    tq, tk = sum(lq), sum(lk)
    projections = 2 * embed_dim * embed_dim * (2 * tq + 2 * tk)  # q and out on the queries, k and v on the keys
    scores = 2 * 2 * embed_dim * sum(a * b for a, b in zip(lq, lk, strict=False))  # Q·Kᵀ and P·V
    return projections + scores


def _mha_flops(q: torch.Tensor, k: torch.Tensor, _v: Any, embed_dim: int, *_: Any, **__: Any) -> int:
    return _attention_flops(q, k, int(embed_dim))


def _encoder_layer_flops(src: torch.Tensor, embed_dim: int, *args: Any, **__: Any) -> int:
    ffn = int(args[13].shape[0])  # ffn_weight_1: [F, E]
    return _attention_flops(src, src, int(embed_dim)) + 2 * 2 * sum(_lengths(src)) * int(embed_dim) * ffn


_mha_flops._get_raw = True  # type: ignore[attr-defined]  # called with the tensors (nested ones have no shape)
_encoder_layer_flops._get_raw = True  # type: ignore[attr-defined]


def _low_bit_formulas() -> dict[Any, Callable[..., int]]:
    ops: dict[Any, Callable[..., int]] = {}
    for namespace, name, formula in (
        ("aten", "_int_mm", _matmul_flops),
        ("aten", "_weight_int8pack_mm", _matmul_flops),
        ("aten", "_weight_int4pack_mm", _matmul_flops),
        ("aten", "_weight_int4pack_mm_for_cpu", _matmul_flops),
        ("onednn", "qconv2d_pointwise", _qconv_flops),
        ("onednn", "qlinear_pointwise", _matmul_flops),
        ("torchslim", "qconv1x1", _qconv1x1_flops),  # present once torchslim.kernels is imported
        ("torchslim", "qdwconv", _qdwconv_flops),
        ("torchslim", "w4a8_linear", _matmul_flops),
        ("torchslim", "w4a8_linear_on", _matmul_flops),
        ("aten", "_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flops),
        ("aten", "_native_multi_head_attention", _mha_flops),
        ("aten", "_transformer_encoder_layer_fwd", _encoder_layer_flops),
    ):
        packet = getattr(getattr(torch.ops, namespace, None), name, None)
        if packet is not None:
            ops[packet] = formula
    return ops


def count_macs(model: nn.Module, example_inputs: Any, *, per_sample: bool = False) -> int:
    """MACs of one forward pass on ``example_inputs`` (FLOPs / 2 as counted by PyTorch).

    Args:
        model: the model, run under ``torch.inference_mode()``.
        example_inputs: a tuple of positional inputs, a dict of keyword inputs or a tensor (as
            :func:`torchslim.core.batches.call_model` reads them).
        per_sample: divide by the batch size (first dim of the first tensor input).
    """
    counter = FlopCounterMode(display=False, custom_mapping=_low_bit_formulas())
    with torch.inference_mode(), counter:
        call_model(model, example_inputs)
    macs = counter.get_total_flops() // 2
    if per_sample:
        batch = batch_size_of(example_inputs)
        if batch > 0:
            macs //= batch
    return int(macs)
