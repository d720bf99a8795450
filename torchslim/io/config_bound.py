"""Bound the model a ``config.json`` describes before building it: ten bytes of lies must not allocate terabytes.

A transformers config is data that states sizes (``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
``intermediate_size``, ...); building the model it describes allocates whatever those say. Before a
torchslim artifact's or a Hugging Face folder's config is built for real, two bounds are checked:

1. **Layers** (what a meta-device build costs in time): the largest layer count the config states
   (:data:`LAYER_KEYS`, top level and one level of sub-configs such as ``text_config``) may not exceed
   the number of tensors stored in the folder's safetensors files, since every layer stores at least one
   tensor. Where no safetensors file tells (``.bin`` weights), :data:`MAX_LAYERS_UNKNOWN` is the bound.
2. **Parameters** (what the real build allocates): the model is first built on PyTorch's ``meta`` device
   (shapes only, no memory) and its parameters and buffers are counted; their size may not exceed
   :func:`model_byte_limit`: the memory available now (``MemAvailable`` on Linux, else the physical
   memory), or ``TORCHSLIM_MAX_MODEL_BYTES`` when that is set and smaller. An artifact's model is built in
   float32 (4 bytes a parameter) before its compression is replayed; an HF folder loads in its config's
   dtype (:func:`load_bytes_per_param`).

Example:
    >>> claimed_layers({"num_hidden_layers": 12, "text_config": {"num_layers": 40}})
    40
    >>> claimed_layers({"n_layer": "many"})
    0
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import TorchslimError, UnsafeInputError

__all__ = [
    "LAYER_KEYS",
    "MAX_LAYERS_UNKNOWN",
    "check_fits",
    "check_layers",
    "claimed_layers",
    "load_bytes_per_param",
    "meta_size",
    "model_byte_limit",
    "stored_tensor_count",
]

LAYER_KEYS = (
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "n_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
)
MAX_LAYERS_UNKNOWN = 1024  # no published transformer comes near this; a bound for folders without safetensors
ENV_LIMIT = "TORCHSLIM_MAX_MODEL_BYTES"
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own header limit


def claimed_layers(config: Any) -> int:
    """The largest integer among :data:`LAYER_KEYS` in ``config`` (a dict) and its dict values; 0 when none."""
    if not isinstance(config, dict):
        return 0
    found = [0]
    for scope in [config, *(v for v in config.values() if isinstance(v, dict))]:
        found += [v for k, v in scope.items() if k in LAYER_KEYS and isinstance(v, int) and not isinstance(v, bool)]
    return max(found)


def stored_tensor_count(files: Iterable[Path], error: type[TorchslimError] = UnsafeInputError) -> int | None:
    """How many tensors the safetensors ``files`` hold, read from their headers only; None without files.

    Raises:
        error: a file whose header is not a safetensors header (truncated, oversized, not a JSON object).
    """
    total, seen = 0, False
    for path in files:
        seen = True
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > _MAX_HEADER_BYTES:
                    raise ValueError(f"header length {length} is over the format's limit")
                header = json.loads(f.read(length))
        except (OSError, struct.error, ValueError, RecursionError) as e:
            raise error(f"{path}: not a valid safetensors header ({str(e)[:200]})") from None
        if not isinstance(header, dict):
            raise error(f"{path}: the safetensors header is not a JSON object")
        total += sum(k != "__metadata__" for k in header)
    return total if seen else None


def check_layers(config: Any, stored: int | None, *, where: str, error: type[TorchslimError]) -> None:
    """Refuse a config claiming more layers than ``stored`` tensors (or :data:`MAX_LAYERS_UNKNOWN` if None)."""
    layers = claimed_layers(config)
    bound = MAX_LAYERS_UNKNOWN if stored is None else max(stored, 1)
    if layers > bound:
        held = f"the weight files hold {stored} tensors" if stored is not None else f"the bound is {bound}"
        raise error(f"{where} claims {layers} layers but {held}; refusing to build it")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def model_byte_limit() -> int:
    """Bytes a rebuilt model may take: memory available now, or ``TORCHSLIM_MAX_MODEL_BYTES`` when smaller."""
    limit = _meminfo_available()
    if limit is None:
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows): only the variable bounds it
            limit = 1 << 62
    env = os.environ.get(ENV_LIMIT)
    if env:
        try:
            limit = min(limit, int(env))
        except ValueError:
            raise UnsafeInputError(f"{ENV_LIMIT}={env!r} is not a number of bytes") from None
    return limit


def meta_size(build: Callable[[], nn.Module]) -> int:
    """Elements in the parameters and buffers of ``build()`` run on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = build()
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # tied weights counted once
    return sum(t.numel() for t in tensors.values())


def load_bytes_per_param(config: Any) -> float:
    """Bytes per parameter that ``from_pretrained`` (``dtype="auto"``) allocates for a config dict: the size
    of its ``dtype`` (``torch_dtype``), float32 when it names none; 0.25 when it carries a
    ``quantization_config`` (2-bit weights, the smallest any quantizer stores).

    Example:
        >>> load_bytes_per_param({"dtype": "bfloat16"}), load_bytes_per_param({}), load_bytes_per_param({"quantization_config": {}})
        (2, 4, 0.25)
    """
    if not isinstance(config, dict):
        return 4
    if config.get("quantization_config") is not None:
        return 0.25
    name = config.get("dtype") or config.get("torch_dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else name
    return dtype.itemsize if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 4


def check_fits(numel: int, *, where: str, error: type[TorchslimError], bytes_per_param: float = 4) -> None:
    """Refuse a model of ``numel`` elements whose size (``bytes_per_param`` each; float32 by default)
    exceeds :func:`model_byte_limit`."""
    need, limit = bytes_per_param * numel, model_byte_limit()
    if need > limit:
        raise error(
            f"{where} describes a model of {numel:,} parameters ({need / 1e9:.3g} GB at {bytes_per_param:g} "
            f"bytes each), over the {limit / 1e9:.3g} GB bound (memory available, or {ENV_LIMIT}); refusing to build it"
        )
