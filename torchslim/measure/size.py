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


def _compressed_weights(model: nn.Module) -> list[tuple[nn.Module, list[torch.Tensor]]]:
    """Compressed modules (``torchslim_compressed``) and their weight/bias buffers.

    Quantized modules keep their weights as buffers (int8 tensors are not trainable parameters); they
    are still the model's weights, so the counts include them.
    """
    out = []
    for module in model.modules():
        if getattr(module, "torchslim_compressed", False):
            bufs = [b for n, b in module.named_buffers(recurse=False) if n in ("weight", "bias") and b is not None]
            out.append((module, bufs))
    return out


def _logical(module: nn.Module, bufs: list[torch.Tensor], nonzero: bool) -> int:
    # A packed layout (e.g. two int4 values per byte) tells its logical element count itself.
    if hasattr(module, "logical_params"):
        return int(module.logical_params())
    return sum(int(torch.count_nonzero(b)) if nonzero else b.numel() for b in bufs)


def count_params(model: nn.Module) -> int:
    """Number of weight elements: parameters (shared ones counted once) plus quantized modules' weights.

    Example:
        >>> import torch.nn as nn
        >>> from torchslim.quantization import Int8WeightOnly
        >>> from torchslim.api import compress_
        >>> count_params(compress_(nn.Sequential(nn.Linear(16, 4)), Int8WeightOnly()))
        68
    """
    compressed = _compressed_weights(model)
    return sum(p.numel() for p in model.parameters()) + sum(_logical(m, b, False) for m, b in compressed)


def count_nonzero(model: nn.Module) -> int:
    """Number of non-zero weight elements (what survives unstructured pruning), quantized weights included."""
    dense = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return int(dense + sum(_logical(m, b, True) for m, b in _compressed_weights(model)))


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
