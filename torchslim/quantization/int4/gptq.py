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

import contextlib
from collections.abc import Iterator

import torch

from torchslim.calibration.hessian import inverse_cholesky
from torchslim.calibration.packed import SymmetricPacked
from torchslim.quantization.int4.primitives import Int4Tensors, minmax_qparams

__all__ = ["gptq_quantize"]


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor | SymmetricPacked,
    group_size: int,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
) -> Int4Tensors:
    """Quantize ``w`` ``[N, K]`` to int4 groups with GPTQ, given the input Hessian ``[K, K]``.

    The solve runs in float32, as the paper's implementation does: the Hessian (accumulated in float64
    by the calibration pass, so every process that sums the same batches gets the same one) is rounded
    once, and the codes are a deterministic function of it. The weight is worked on transposed
    (``[K, N]``: each column a contiguous row) and updated in place, one rank-1 update per column
    inside a block and one matrix product per block for the columns after it.

    A packed Hessian (:class:`~torchslim.calibration.packed.SymmetricPacked`, what the calibration pass
    accumulates: half the memory) gives the same codes as the full matrix, and is released as soon as
    its permuted float32 copy is made, so the solve holds two float32 ``K × K`` buffers and no float64 one.

    Args:
        w: float weight ``[N, K]`` (any float dtype: converted to float32 a band of rows at a time).
        hessian: ``2/T · X Xᵀ`` of the layer's calibration inputs (float64 or float32), full or packed.
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
    h = hessian.data if isinstance(hessian, SymmetricPacked) else hessian.detach()
    if h is None or not bool(torch.isfinite(h).all()):
        raise ValueError("GPTQ Hessian contains NaN or Inf" if h is not None else "GPTQ Hessian was released")
    diag = hessian.diagonal() if isinstance(hessian, SymmetricPacked) else torch.diag(h)
    perm = torch.argsort(diag, descending=True, stable=True) if act_order else torch.arange(k)
    inv = torch.argsort(perm)
    if isinstance(hessian, SymmetricPacked):
        hp = hessian.permuted(perm, torch.float32)
        del h
        hessian.release()  # read once: its memory goes before the factorisation's buffer is made
    else:
        hp = _permuted(h, perm)
    u = inverse_cholesky(hp, damp, overwrite=True)  # [K, K] upper, in the permuted order; hp is spent
    del hp
    wt = _rows_float32(w.detach().t(), perm)  # [K, N]: row j is permuted column j
    n_groups = k // group_size
    scale = torch.zeros(n, n_groups)
    zero = torch.zeros(n, n_groups)
    have = [False] * n_groups
    group_of = (perm // group_size).tolist()  # original group of each permuted position
    qt = torch.empty(k, n, dtype=torch.uint8)  # codes, transposed and permuted like wt

    for start in range(0, k, blocksize):
        end = min(start + blocksize, k)
        block = wt[start:end]  # a view: the in-block updates land in wt
        ub = u[start:end, start:end]
        errs = torch.empty(end - start, n)
        with _one_thread():
            _quantize_block(wt, block, ub, errs, qt, start, scale, zero, have, group_of, inv, group_size)
        if end < k:
            wt[end:].addmm_(u[start:end, end:].t(), errs, alpha=-1.0)
    return Int4Tensors(qt[inv].t().contiguous(), scale, zero)


def _quantize_block(
    wt: torch.Tensor,
    block: torch.Tensor,
    ub: torch.Tensor,
    errs: torch.Tensor,
    qt: torch.Tensor,
    start: int,
    scale: torch.Tensor,
    zero: torch.Tensor,
    have: list[bool],
    group_of: list[int],
    inv: torch.Tensor,
    group_size: int,
) -> None:
    """The columns of one block (rows of ``block``, a view of ``wt``), in order: codes into ``qt``, the
    scaled errors into ``errs``, each column's error spread over the block's later columns."""
    for j in range(block.shape[0]):
        gi = group_of[start + j]
        if not have[gi]:
            # This group's columns (permuted positions), none quantized yet: in-block ones are up to
            # date, the others miss only this block's pending lazy update (as in the paper's code).
            pos = inv[gi * group_size : (gi + 1) * group_size]
            s, z = minmax_qparams(wt[pos].t(), group_size)
            scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
            have[gi] = True
        row = block[j]
        s, z = scale[:, gi], zero[:, gi]
        qc = torch.round((row - z) / s).add_(8).clamp_(0, 15)
        err = errs[j]
        torch.sub(row, (qc - 8).mul_(s).add_(z), out=err)
        err.div_(ub[j, j])
        block[j:].addr_(ub[j, j:], err, alpha=-1.0)
        qt[start + j] = qc.to(torch.uint8)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread inside: the column loop's vector operations (a few thousand elements each)
    lose more to waking and joining worker threads than they gain, most of all on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rows_float32(m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``m[idx]`` in float32, gathered a band of rows at a time (no float32 copy of ``m`` in its own order)."""
    out = torch.empty(len(idx), m.shape[1], dtype=torch.float32)
    rows = max(1, (1 << 20) // max(1, m.shape[1]))
    for start in range(0, len(idx), rows):
        out[start : start + rows] = m.index_select(0, idx[start : start + rows])
    return out


def _permuted(h: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``H[perm][:, perm]`` in float32, gathered a band of rows at a time (no second ``K × K`` temporary)."""
    k = h.shape[0]
    out = torch.empty(k, k, dtype=torch.float32)
    rows = max(1, (1 << 20) // max(1, k))
    for start in range(0, k, rows):
        idx = perm[start : start + rows]
        out[start : start + rows] = h.index_select(0, idx).index_select(1, perm)
    return out
