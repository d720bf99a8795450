"""Parameter counts and on-disk size.

Example:
    >>> import torch.nn as nn
    >>> count_params(nn.Linear(10, 5))
    55
"""

from __future__ import annotations

import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of non-zero parameter elements (what survives unstructured pruning)."""
    return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict written as one safetensors file (header included).

    This is the dense artifact size; techniques with their own storage (sparse, packed) change what
    is in the state dict, so the figure follows them.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        # Tied weights are stored once, as ``ts.save`` does.
        if key in seen and t.numel():
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    return len(safetensors_bytes(tensors))


def artifact_bytes(model: nn.Module) -> int:
    """Size in bytes of what ``ts.save`` would write for the model's tensors."""
    try:  # the artifact writer, once present, knows the exact layout (sparse, packed, ...)
        from torchslim.io import artifact_tensor_bytes  # type: ignore[attr-defined]
    except ImportError:
        return state_dict_bytes(model)
    return artifact_tensor_bytes(model)
