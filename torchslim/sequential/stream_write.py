"""Write one safetensors file from tensors kept in several files, one tensor in memory at a time.

``safetensors.torch.save`` needs every tensor in memory (and then a second copy as bytes); an artifact
assembled block by block must not. :func:`write_merged` writes the same bytes ``safetensors.torch.save``
would write for the union of the parts' tensors: the header order and the dtype names are taken from
the library itself (it serialises one-element stand-ins with the same names and dtypes), the header is
compact JSON padded with spaces to a multiple of 8 bytes, followed by each tensor's bytes in header
order (the format: https://github.com/huggingface/safetensors#format).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save, save_file
    >>> d = Path(tempfile.mkdtemp())
    >>> a, b = {"x": torch.arange(6.0).reshape(2, 3)}, {"y": torch.ones(2, dtype=torch.bfloat16)}
    >>> save_file(a, d / "a.safetensors"); save_file(b, d / "b.safetensors")
    >>> write_merged([d / "a.safetensors", d / "b.safetensors"], d / "out.safetensors")
    >>> (d / "out.safetensors").read_bytes() == save({**a, **b})
    True
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from torchslim.errors import UnsafeInputError

__all__ = ["write_merged"]

_CHUNK = 1 << 26  # bytes written per call for large tensors


def _layout(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> tuple[list[str], dict[str, str]]:
    """(names in the order safetensors writes them, name -> its dtype string), from the library itself."""
    standins = {name: torch.zeros(1, dtype=dtype) for name, (dtype, _) in specs.items()}
    data = st_save(standins)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    return order, {k: header[k]["dtype"] for k in order}


def write_merged(parts: Sequence[Path], out: Path) -> None:
    """Write the tensors of the safetensors files ``parts`` (disjoint names) as one file ``out``.

    Raises:
        UnsafeInputError: a name appears in two parts.
    """
    owner: dict[str, int] = {}
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for i, path in enumerate(parts):
        with safe_open(str(path), framework="pt") as r:
            for name in r.keys():  # noqa: SIM118 (safe_open has keys(), no __iter__)
                if name in owner:
                    raise UnsafeInputError(f"tensor {name!r} is written by two blocks")
                owner[name] = i
                sl = r.get_slice(name)
                specs[name] = (_DTYPES[sl.get_dtype()], tuple(sl.get_shape()))
    order, dtype_names = _layout(specs)
    header: dict[str, dict[str, object]] = {}
    offset = 0
    for name in order:
        dtype, shape = specs[name]
        size = _numel(shape) * torch.empty(0, dtype=dtype).element_size()
        header[name] = {"dtype": dtype_names[name], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        # One part mapped at a time (the header order mostly follows the parts): a map keeps the pages it
        # has read resident, so holding every part open would hold the whole artifact.
        current: tuple[int, Any] | None = None
        for name in order:
            if current is None or current[0] != owner[name]:
                current = None
                current = (owner[name], safe_open(str(parts[owner[name]]), framework="pt"))
            t = current[1].get_tensor(name).contiguous().reshape(-1)
            raw = t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
            for start in range(0, raw.numel(), _CHUNK):
                f.write(raw[start : start + _CHUNK].numpy().tobytes())
            del t, raw


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
