"""Compact storage of tensors with many zeros: non-zero values + a bitmask, flat indices or byte deltas,
whichever is smallest.

``deltas`` stores each non-zero's distance from the previous one in one byte (a gap over 255 is
bridged by stored zeros every 255 positions), so a 90%-sparse int8 tensor costs about 2 bytes per
non-zero instead of 1 byte + a 1-bit-per-element mask.

Pruned weights are stored at (roughly) their non-zero size, so the artifact shrinks with sparsity; an
int8 tensor with zeros is stored the same way, so quantization on top multiplies the saving.
Each stream is then DEFLATE-coded when that saves bytes (io/deflate.py: the "coding" stage of Deep
Compression); ``meta["deflate"]`` lists the coded parts with their dtype and length. Decoding restores
the exact tensor.

Example:
    >>> import torch
    >>> t = torch.zeros(1000); t[::10] = 1.0
    >>> enc = encode_sparse(t)
    >>> enc.format, decode_sparse(enc.meta, enc.tensors).equal(t)
    ('deltas', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchslim.errors import UnsafeInputError
from torchslim.io.deflate import deflate_tensor, inflate_tensor

MIN_NUMEL = 256
# Store sparsely only when it saves at least this fraction (small gains aren't worth a format change).
MIN_SAVING = 0.1
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32, torch.float64)
}


@dataclass
class SparseEncoding:
    format: str  # "bitmask", "indices" or "deltas"
    meta: dict[str, Any]  # shape, dtype, format
    tensors: dict[str, torch.Tensor]  # "values" + "bitmask" | "indices" | "deltas"


def _byte_deltas(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(deltas uint8, positions of the real non-zeros in the stream)`` for sorted flat indices ``idx``.

    Each gap ``g`` (from the previous index, the first from -1) becomes ``k = (g - 1) // 255`` filler
    steps of 255 (whose stored values are zero) and one step of ``g - 255·k`` in [1, 255].
    """
    gaps = np.diff(np.concatenate([[-1], idx.astype(np.int64)]))
    fillers = (gaps - 1) // 255
    counts = fillers + 1
    ends = np.cumsum(counts) - 1
    deltas = np.full(int(counts.sum()), 255, dtype=np.uint8)
    deltas[ends] = (gaps - 255 * fillers).astype(np.uint8)
    return deltas, ends


def encode_sparse(t: torch.Tensor, *, deflate: bool = True) -> SparseEncoding | None:
    """The compact encoding of ``t``, or None when dense storage is as small (or the dtype unsupported).

    ``deflate`` codes each stream with DEFLATE where that saves bytes (recorded in ``meta["deflate"]``).
    """
    enc = _layout(t)
    if enc is None or not deflate:
        return enc
    coded: dict[str, dict[str, Any]] = {}
    for part, value in list(enc.tensors.items()):
        packed = deflate_tensor(value)
        if packed is not None:
            enc.tensors[part], coded[part] = packed
    if coded:
        enc.meta["deflate"] = coded
    return enc


def _layout(t: torch.Tensor) -> SparseEncoding | None:
    """The smallest of the three raw layouts, or None when none saves :data:`MIN_SAVING` over dense."""
    dtype = str(t.dtype).removeprefix("torch.")
    if t.numel() < MIN_NUMEL or dtype not in DTYPES:
        return None
    flat = t.detach().reshape(-1)
    nnz = int(torch.count_nonzero(flat))  # no mask (and no int64 sum of it) for a tensor that stays dense
    item = t.element_size()
    dense = t.numel() * item
    bitmask_bytes = nnz * item + (t.numel() + 7) // 8
    indices_bytes = nnz * (item + 4)
    # The delta stream holds at least one step per non-zero, so no layout can beat min(bitmask, nnz·(item+1)):
    # a dense tensor returns here, before the int64 positions of every element (8 bytes each) are built.
    if min(bitmask_bytes, nnz * (item + 1)) > dense * (1 - MIN_SAVING):
        return None
    nz = flat != 0
    idx_np = torch.nonzero(nz).reshape(-1).cpu().numpy()
    deltas, ends = _byte_deltas(idx_np)
    deltas_bytes = deltas.size * (item + 1)
    compact = min(bitmask_bytes, indices_bytes, deltas_bytes)
    if compact > dense * (1 - MIN_SAVING):
        return None
    values = flat[nz].contiguous().clone()
    meta = {"shape": list(t.shape), "dtype": dtype}
    if deltas_bytes == compact:
        stream = torch.zeros(deltas.size, dtype=t.dtype)
        stream[torch.from_numpy(ends)] = values.cpu()
        meta["format"] = "deltas"
        return SparseEncoding("deltas", meta, {"values": stream, "deltas": torch.from_numpy(deltas)})
    if bitmask_bytes == compact:
        bits = np.packbits(nz.cpu().numpy(), bitorder="little")
        meta["format"] = "bitmask"
        return SparseEncoding("bitmask", meta, {"values": values, "bitmask": torch.from_numpy(bits)})
    idx = torch.nonzero(nz).reshape(-1).to(torch.int32)
    meta["format"] = "indices"
    return SparseEncoding("indices", meta, {"values": values, "indices": idx})


MAX_NUMEL = 2**31 - 1  # the int32 positions of the "indices" layout: no stored tensor is larger


def _checked_meta(meta: Any, expect: tuple[tuple[int, ...], torch.dtype] | None) -> tuple[list[int], torch.dtype, Any]:
    """``(shape, dtype, format)`` of a sparse entry, refused when malformed, larger than :data:`MAX_NUMEL`,
    or different from ``expect`` (the shape and dtype the model holds for it)."""
    try:
        raw_shape, dtype, fmt = meta["shape"], DTYPES[meta["dtype"]], meta["format"]
    except (KeyError, TypeError) as e:
        raise UnsafeInputError(f"malformed sparse tensor entry: missing or bad {e!s:.60}") from None
    if not isinstance(raw_shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw_shape):
        raise UnsafeInputError(f"sparse tensor: the shape must be a list of integers, got {raw_shape!r:.60}")
    shape = list(raw_shape)
    if any(s < 0 for s in shape):
        raise UnsafeInputError(f"sparse tensor: negative size in shape {shape}")
    if expect is not None and (tuple(shape), dtype) != (tuple(expect[0]), expect[1]):
        raise UnsafeInputError(
            f"sparse tensor: {tuple(shape)} {dtype} stored, the model expects {tuple(expect[0])} {expect[1]}"
        )
    if math.prod(shape) > MAX_NUMEL:
        raise UnsafeInputError(f"sparse tensor: shape {str(shape):.60} is larger than {MAX_NUMEL} elements")
    return shape, dtype, fmt


def decode_sparse(
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    expect: tuple[tuple[int, ...], torch.dtype] | None = None,
) -> torch.Tensor:
    """Rebuild the dense tensor; UnsafeInputError when the parts are inconsistent.

    ``expect`` is the ``(shape, dtype)`` the model holds for this tensor: an entry that claims anything
    else is refused before any memory is allocated or any stream inflated. Without it, no entry may
    exceed :data:`MAX_NUMEL` elements.
    """
    if not isinstance(meta, dict):
        raise UnsafeInputError("sparse tensor: the entry is not a mapping")
    shape, dtype, fmt = _checked_meta(meta, expect)
    numel = math.prod(shape)
    coded = meta.get("deflate", {})
    if not isinstance(coded, dict) or not set(coded) <= set(tensors):
        raise UnsafeInputError("sparse tensor: malformed deflate entry")
    # No stream is longer than the dense tensor (the bitmask: one bit per element).
    tensors = {
        k: inflate_tensor(v, coded[k], max_numel=(numel + 7) // 8 if k == "bitmask" else numel) if k in coded else v
        for k, v in tensors.items()
    }
    values = tensors.get("values")
    if values is None or values.dtype != dtype or values.dim() != 1 or values.numel() > numel:
        raise UnsafeInputError("sparse tensor: missing values, or values of the wrong dtype or size")
    if fmt == "bitmask":
        bits = tensors.get("bitmask")
        if bits is None or bits.dtype != torch.uint8 or bits.numel() != (numel + 7) // 8:
            raise UnsafeInputError("sparse tensor: bitmask has the wrong size or dtype")
        nz = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel, bitorder="little").astype(bool))
        if int(nz.sum()) != values.numel():
            raise UnsafeInputError("sparse tensor: bitmask and values disagree")
        out = torch.zeros(numel, dtype=dtype)
        out[nz] = values
    elif fmt == "indices":
        idx = tensors.get("indices")
        if idx is None or idx.dtype != torch.int32 or idx.numel() != values.numel():
            raise UnsafeInputError("sparse tensor: indices have the wrong size or dtype")
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel or not bool((idx[1:] > idx[:-1]).all())):
            raise UnsafeInputError("sparse tensor: indices out of range or not strictly increasing")
        out = torch.zeros(numel, dtype=dtype)
        out[idx] = values
    elif fmt == "deltas":
        deltas = tensors.get("deltas")
        if deltas is None or deltas.dtype != torch.uint8 or deltas.dim() != 1 or deltas.numel() != values.numel():
            raise UnsafeInputError("sparse tensor: deltas have the wrong size or dtype")
        pos = torch.cumsum(deltas.long(), 0) - 1
        if deltas.numel() and (int(deltas.min()) < 1 or int(pos[-1]) >= numel):
            raise UnsafeInputError("sparse tensor: deltas out of range")
        out = torch.zeros(numel, dtype=dtype)
        out[pos] = values
    else:
        raise UnsafeInputError(f"sparse tensor: unknown format {fmt!r:.40}")
    return out.reshape(shape)
