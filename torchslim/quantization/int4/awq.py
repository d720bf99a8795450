"""AWQ (Lin, Tang, Tang, Yang, Dang, Gan & Han 2023, "AWQ: Activation-aware Weight Quantization for
LLM Compression and Acceleration"): protect the weights that see large activations by scaling them.

For a per-input-channel factor ``s`` ``[K]``, ``W X = (W diag(s)) (diag(s)⁻¹ X)``; quantizing
``W diag(s)`` gives channels with ``s_j > 1`` a relatively finer grid. AWQ searches

    s = a^α / sqrt(max(a^α) · min(a^α)),     α ∈ {0, 1/n, …, (n−1)/n}

where ``a_j`` is the activation magnitude of channel ``j`` on the calibration data, and keeps the α
whose quantized layer has the least output error ``tr(ΔW H ΔWᵀ)`` with
``ΔW = Q(W diag(s)) diag(s)⁻¹ − W`` and ``H = 2/T · X Xᵀ``. As in the paper's released method, a
per-group clipping ratio is then searched on the scaled weight (see :func:`~torchslim.quantization.int4.rtn.clip_search`).

Differences from the paper, on purpose: ``a_j`` is the channel's RMS ``sqrt(H_jj / 2)`` (the
Hessian the shared calibration pass already collects) instead of its mean absolute value, and the
output error is computed exactly from ``H`` instead of re-running the block on sampled tokens. The
factor ``1/s`` cannot in general be folded into the previous operator here, so the int4 module
multiplies its input by it (one element-wise pass over ``[M, K]``).

Example:
    >>> import torch
    >>> from torchslim.calibration import hessian_from_inputs
    >>> from torchslim.quantization.common.sqnr import output_error
    >>> from torchslim.quantization.int4.primitives import dequantize_int4
    >>> from torchslim.quantization.int4.rtn import rtn_quantize
    >>> g = torch.Generator().manual_seed(0)
    >>> w, x = torch.randn(16, 64, generator=g), torch.randn(64, 256, generator=g)
    >>> x[:4] *= 20  # a few salient input channels, as in transformer activations
    >>> h = hessian_from_inputs(x)
    >>> inv_s, t = awq_quantize(w, h, 32)
    >>> awq_err = float(output_error(dequantize_int4(*t, 32).double() * inv_s.double() - w.double(), h))
    >>> awq_err < float(output_error(dequantize_int4(*rtn_quantize(w, 32), 32).double() - w.double(), h))
    True
"""

from __future__ import annotations

import torch

from torchslim.quantization.common.sqnr import output_error
from torchslim.quantization.int4.primitives import Int4Tensors, dequantize_int4
from torchslim.quantization.int4.rtn import clip_search, rtn_quantize

__all__ = ["awq_quantize", "awq_scales"]

# A channel that never fires (on the calibration data) must not give s = 0, nor scale its weights to
# nothing: magnitudes are floored at 1e-4 of the largest (and at 1e-6 absolute).
_A_MIN, _A_REL = 1e-6, 1e-4


def awq_scales(act: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = a^α / sqrt(max · min)`` ``[K]`` from channel magnitudes ``a`` ``[K]`` (finite, > 0).

    Example:
        >>> awq_scales(torch.tensor([4.0, 1.0]), 1.0).tolist()
        [2.0, 0.5]
    """
    a = act.double()
    s = a.clamp_min(max(_A_MIN, _A_REL * float(a.max()))).pow(alpha)
    return s / torch.sqrt(s.max() * s.min())


def awq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    *,
    n_grid: int = 20,
    clip: bool = True,
) -> tuple[torch.Tensor, Int4Tensors]:
    """AWQ scale search (and clipping search) for ``w`` ``[N, K]`` given the input Hessian ``[K, K]``.

    Args:
        w: float weight ``[N, K]``.
        hessian: ``2/T · X Xᵀ`` of the layer's calibration inputs.
        group_size: columns per group (must divide K).
        n_grid: number of α values tried in [0, 1).
        clip: also search a per-group clipping ratio after the scaling.

    Returns:
        ``(input_scale, tensors)``: ``input_scale`` = ``1/s`` ``[K]`` float32 multiplies the layer's
        input; ``tensors`` quantize ``W diag(s)``. α = 0 (``s`` = 1) is in the grid, so the result is
        never worse than RTN on the calibration data.
    """
    wd = w.detach().double()
    h = hessian.detach().double()
    act = torch.sqrt(torch.diag(h).clamp_min(0) / 2)
    best = None
    for i in range(max(1, n_grid)):
        s = awq_scales(act, i / max(1, n_grid))
        t = rtn_quantize((wd * s).float(), group_size)
        err = float(output_error(dequantize_int4(*t, group_size).double() / s - wd, h))
        if best is None or err < best[0]:
            best = (err, s, t)
    assert best is not None
    _, s, t = best
    if clip:
        ws = (wd * s).float()
        h_scaled = h / s.reshape(-1, 1) / s.reshape(1, -1)  # inputs of the scaled weight are x / s
        t2 = rtn_quantize(ws, group_size, clip_search(ws, group_size, h_scaled))
        err2 = float(output_error(dequantize_int4(*t2, group_size).double() / s - wd, h))
        if err2 < best[0]:
            t = t2
    return (1.0 / s).float(), t
