"""When ``compress --model hf:DIR`` should go block by block on its own: the model would not fit.

The in-memory path builds the whole model in float32 (``torchslim.io.hf.load_hf_model`` refuses one over
:func:`torchslim.io.config_bound.model_byte_limit`: the memory available now, or
``TORCHSLIM_MAX_MODEL_BYTES``). :func:`sequential_reason` sizes the same model from its weightless
skeleton (4 bytes per parameter and buffer element); over that bound, and when the architecture and
every recipe step run block by block, it returns the one-line message the command prints before
switching.

Example:
    >>> sequential_reason("no-such-folder", None) is None
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchslim.errors import TorchslimError
from torchslim.io.config_bound import model_byte_limit
from torchslim.measure.memlimit import format_bytes
from torchslim.sequential.runner import check_sequential
from torchslim.sequential.skeleton import open_skeleton

__all__ = ["sequential_reason"]


def sequential_reason(path: str | Path, recipe: Any) -> str | None:
    """The message for switching to sequential compression, or None (it fits, or cannot go sequential)."""
    try:
        sk = open_skeleton(path)
    except TorchslimError:
        return None  # not a folder it can read: the in-memory path reports the problem itself
    tensors = {id(t): t for t in [*sk.model.parameters(), *sk.model.buffers()]}
    need, limit = 4 * sum(t.numel() for t in tensors.values()), model_byte_limit()
    if need <= limit:
        return None
    try:
        check_sequential(sk.model, recipe)
    except TorchslimError:
        return None  # the in-memory path then refuses the model with its own message
    return (
        f"{path}: the model needs about {format_bytes(need)} in float32, over the {format_bytes(limit)} "
        "available; compressing it block by block (--sequential)"
    )
