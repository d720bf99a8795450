"""Compact storage of tensors with many zeros: non-zero values + a bitmask or flat indices, whichever is smaller.

Pruned weights are stored at (roughly) their non-zero size, so the artifact shrinks with sparsity; an
int8 tensor with zeros is stored the same way, so quantization on top multiplies the saving.
Decoding restores the exact tensor.

Example:
    >>> import torch
    >>> t = torch.zeros(1000); t[::10] = 1.0
    >>> enc = encode_sparse(t)
    >>> enc.format, decode_sparse(enc.meta, enc.tensors).equal(t)
    ('bitmask', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchslim.errors import UnsafeInputError

MIN_NUMEL = 256
# Store sparsely only when it saves at least this fraction (small gains aren't worth a format change).
MIN_SAVING = 0.1
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32, torch.float64)
}


@dataclass
class SparseEncoding:
    format: str  # "bitmask" or "indices"
    meta: dict[str, Any]  # shape, dtype, format
    tensors: dict[str, torch.Tensor]  # "values" + "bitmask" | "indices"


def encode_sparse(t: torch.Tensor) -> SparseEncoding | None:
    """The compact encoding of ``t``, or None when dense storage is as small (or the dtype unsupported)."""
    dtype = str(t.dtype).removeprefix("torch.")
    if t.numel() < MIN_NUMEL or dtype not in DTYPES:
        return None
    flat = t.detach().reshape(-1)
    nz = flat != 0
    nnz = int(nz.sum())
    item = t.element_size()
    dense = t.numel() * item
    bitmask_bytes = (t.numel() + 7) // 8
    indices_bytes = nnz * 4
    compact = nnz * item + min(bitmask_bytes, indices_bytes)
    if compact > dense * (1 - MIN_SAVING):
        return None
    values = flat[nz].contiguous().clone()
    meta = {"shape": list(t.shape), "dtype": dtype}
    if bitmask_bytes <= indices_bytes:
        bits = np.packbits(nz.cpu().numpy(), bitorder="little")
        meta["format"] = "bitmask"
        return SparseEncoding("bitmask", meta, {"values": values, "bitmask": torch.from_numpy(bits)})
    idx = torch.nonzero(nz).reshape(-1).to(torch.int32)
    meta["format"] = "indices"
    return SparseEncoding("indices", meta, {"values": values, "indices": idx})


def decode_sparse(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild the dense tensor; UnsafeInputError when the parts are inconsistent."""
    try:
        shape = [int(s) for s in meta["shape"]]
        dtype = DTYPES[meta["dtype"]]
        fmt = meta["format"]
        values = tensors["values"]
    except (KeyError, TypeError, ValueError) as e:
        raise UnsafeInputError(f"malformed sparse tensor entry: {e!r}") from None
    if any(s < 0 for s in shape) or values.dtype != dtype or values.dim() != 1:
        raise UnsafeInputError("sparse tensor: bad shape, dtype or values")
    numel = int(np.prod(shape)) if shape else 1
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
    else:
        raise UnsafeInputError(f"sparse tensor: unknown format {fmt!r}")
    return out.reshape(shape)
