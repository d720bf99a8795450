"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"): int4 weights with second-order error compensation.

For a layer ``Y = W X`` with calibration inputs ``X`` ``[K, T]`` the layer-wise objective
``‖W X − Ŵ X‖²`` has Hessian ``H = 2/T · X Xᵀ``. Columns are quantized one at a time; the error of
column ``j`` is spread over the columns not yet quantized with the optimal-brain-surgeon update

    δ = (w_j − q(w_j)) / [U]_jj,    W_{:, j:} −= δ · U_{j, j:}

where ``U`` is the upper Cholesky factor of ``(H + λI)⁻¹`` (λ = ``damp`` · mean diag H; the damping
is raised ×10 up to ×1000 when the factorisation fails, see
:func:`torchslim.calibration.hessian.inverse_cholesky`, shared with SparseGPT). The paper's tricks:

- **lazy batch updates**: inside a block of ``blocksize`` columns the updates touch only the block;
  the rest of the matrix gets one ``E · U_{block, rest}`` product per block.
- **activation order**: columns are visited by decreasing ``H_jj`` (the inputs with the most energy
  first, while there are the most columns left to absorb their error).
- **groups**: each group of ``g`` original columns gets its min-max parameters the first time one of
  its columns is reached, from the weights as updated so far; with activation order the groups stay
  the stored contiguous ones (what the int4 kernels read), unlike the paper's ``g_idx`` gather.

Example:
    >>> import torch
    >>> from torchslim.calibration import hessian_from_inputs
    >>> from torchslim.quantization.common.sqnr import output_error
    >>> from torchslim.quantization.int4.primitives import dequantize_int4
    >>> from torchslim.quantization.int4.rtn import rtn_quantize
    >>> g = torch.Generator().manual_seed(0)
    >>> w, x = torch.randn(16, 64, generator=g), torch.randn(64, 256, generator=g)
    >>> x[1::2] = x[0::2] + 0.1 * x[1::2]  # correlated inputs: where GPTQ's updates pay off
    >>> h = hessian_from_inputs(x)
    >>> err = lambda t: float(output_error(dequantize_int4(*t, 32).double() - w.double(), h))
    >>> err(gptq_quantize(w, h, 32)) < err(rtn_quantize(w, 32))
    True
"""

from __future__ import annotations

import torch

from torchslim.calibration.hessian import inverse_cholesky
from torchslim.quantization.int4.primitives import Int4Tensors, minmax_qparams

__all__ = ["gptq_quantize"]


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
) -> Int4Tensors:
    """Quantize ``w`` ``[N, K]`` to int4 groups with GPTQ, given the input Hessian ``[K, K]``.

    Args:
        w: float weight ``[N, K]``.
        hessian: ``2/T · X Xᵀ`` of the layer's calibration inputs (float64 preferred).
        group_size: columns per group (must divide K).
        blocksize: columns per lazy-update block.
        damp: dampening λ as a fraction of mean diag H.
        act_order: visit columns by decreasing ``H_jj``.

    Returns:
        :class:`~torchslim.quantization.int4.primitives.Int4Tensors` in the original column order.

    Raises:
        torch.linalg.LinAlgError: H stays not positive definite with 1000× damping (callers fall back to RTN).
        ValueError: the Hessian has NaN/Inf entries.
    """
    n, k = w.shape
    h = hessian.detach().double()
    if not bool(torch.isfinite(h).all()):
        raise ValueError("GPTQ Hessian contains NaN or Inf")
    wd = w.detach().double().clone()
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(k)
    inv = torch.argsort(perm)
    wd, h = wd[:, perm], h[perm][:, perm]
    u = inverse_cholesky(h, damp)  # [K, K] upper, in the permuted order
    n_groups = k // group_size
    scale = torch.zeros(n, n_groups)
    zero = torch.zeros(n, n_groups)
    have = torch.zeros(n_groups, dtype=torch.bool)
    group_of = perm // group_size  # [K]: original group of each permuted position
    q = torch.zeros(n, k, dtype=torch.uint8)

    for start in range(0, k, blocksize):
        end = min(start + blocksize, k)
        wb = wd[:, start:end].clone()  # [N, B] working copy with in-block updates
        errs = torch.zeros_like(wb)
        for j in range(end - start):
            gi = int(group_of[start + j])
            if not have[gi]:
                # Permuted positions of this group's columns; none is quantized yet. Take in-block ones
                # from the working copy (up to date), the others from wd (missing only this block's
                # pending lazy update).
                pos = inv[gi * group_size : (gi + 1) * group_size]
                cols = wd[:, pos].clone()
                inblock = (pos >= start) & (pos < end)
                cols[:, inblock] = wb[:, pos[inblock] - start]
                s, z = minmax_qparams(cols.float(), group_size)
                scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
                have[gi] = True
            col = wb[:, j]
            s, z = scale[:, gi : gi + 1], zero[:, gi : gi + 1]
            qc = _quantize_column(col, s, z)
            deq = ((qc.double() - 8) * s[:, 0].double()) + z[:, 0].double()
            err = (col - deq) / u[start + j, start + j]
            wb[:, j:] -= err.reshape(-1, 1) * u[start + j, start + j : end].reshape(1, -1)
            q[:, start + j] = qc
            errs[:, j] = err
        wd[:, end:] -= errs @ u[start:end, end:]
    return Int4Tensors(q[:, inv].contiguous(), scale, zero)


def _quantize_column(col: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Nearest codes ``[N]`` uint8 of one column ``[N]`` for its group's ``scale``/``zero`` ``[N, 1]``."""
    q = torch.round((col.float() - zero[:, 0]) / scale[:, 0]) + 8
    return q.clamp_(0, 15).to(torch.uint8)
