"""Round-to-nearest int4 (the baseline) and a per-group clipping search that any method can reuse.

RTN takes each group's min-max range (see :mod:`~torchslim.quantization.int4.primitives`) and rounds every weight to the
nearest of its 16 levels. Shrinking the range (clipping the extremes) trades a large error on a few
outliers for a finer grid on everything else; :func:`clip_search` picks, per (row, group), the ratio
``c`` of a grid that minimises the group's error ``Δ_g H_gg Δ_gᵀ`` (the block of the layer-output
error that the group's own columns cause; plain ``‖Δ_g‖²`` without calibration).

Example:
    >>> import torch
    >>> w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    >>> w[0, 0] = 12.0  # one outlier stretches row 0's first group
    >>> plain, clipped = rtn_quantize(w, 32), rtn_quantize(w, 32, clip=clip_search(w, 32))
    >>> err = lambda t: float(((dequantize_int4(*t, 32) - w) ** 2).sum())
    >>> err(clipped) <= err(plain)
    True
"""

from __future__ import annotations

import torch

from torchslim.quantization.int4.primitives import Int4Tensors, dequantize_int4, minmax_qparams, quantize_int4

__all__ = ["CLIP_GRID", "clip_search", "group_errors", "rtn_quantize"]

CLIP_GRID = tuple(round(1.0 - 0.025 * i, 3) for i in range(17))  # 1.0 … 0.6


def rtn_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | float = 1.0) -> Int4Tensors:
    """Round to nearest with min-max group parameters, optionally clipped (``clip`` scalar or ``[N, G]``).

    Args:
        w: ``[N, K]`` float weight.
        group_size: columns per group (32, 64, 128 or 256; must divide K).
        clip: range shrink factor(s) in (0, 1].

    Returns:
        :class:`Int4Tensors` ``(q [N, K] uint8, scale [N, G], zero [N, G])``.

    Example:
        >>> t = rtn_quantize(torch.linspace(-1, 1, 32).reshape(1, 32), 32)
        >>> t.q[0, [0, -1]].tolist()
        [0, 15]
    """
    scale, zero = minmax_qparams(w, group_size, clip)
    return Int4Tensors(quantize_int4(w, scale, zero, group_size), scale, zero)


def group_errors(delta: torch.Tensor, group_size: int, hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Per (row, group) error ``[N, G]``: ``Δ_g H_gg Δ_gᵀ`` with the diagonal blocks of H, or ``‖Δ_g‖²``.

    Example:
        >>> group_errors(torch.ones(1, 64), 32).tolist()
        [[32.0, 32.0]]
    """
    n, k = delta.shape
    d = delta.reshape(n, k // group_size, group_size)
    if hessian is None:
        return (d.float() ** 2).sum(-1)
    g = k // group_size
    idx = torch.arange(g)
    blocks = hessian.float().reshape(g, group_size, g, group_size)[idx, :, idx, :]  # [G, g, g]
    return torch.einsum("ngi,gij,ngj->ng", d.float(), blocks, d.float())


def clip_search(
    w: torch.Tensor,
    group_size: int,
    hessian: torch.Tensor | None = None,
    grid: tuple[float, ...] = CLIP_GRID,
) -> torch.Tensor:
    """The clipping ratio ``[N, G]`` from ``grid`` with the least :func:`group_errors` per (row, group).

    ``grid`` should contain 1.0 so the result is never worse than plain min-max.
    """
    w = w.float()
    best_err = best = None
    for c in grid:
        t = rtn_quantize(w, group_size, c)
        err = group_errors(dequantize_int4(t.q, t.scale, t.zero, group_size) - w, group_size, hessian)
        if best_err is None:
            best_err, best = err, torch.full_like(err, c)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, c), best)
    assert best is not None
    return best
