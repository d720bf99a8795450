"""Device names checked up front: a device that is not available is refused at once.

Example:
    >>> check_device("cpu")
    'cpu'
"""

from __future__ import annotations

import torch

from torchslim.errors import ConfigError

__all__ = ["check_device"]


def _count(kind: str) -> int:
    """How many devices of ``kind`` this process can use (0: none, or a backend torch lacks)."""
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        return 0
    count = getattr(backend, "device_count", None)
    return int(count()) if callable(count) else 1


def check_device(device: str | torch.device) -> str:
    """``device`` as a string, after checking that it is available.

    Raises:
        ConfigError: an unknown device name, or a device that is not available (``"cuda"``
            without CUDA, ``"cuda:3"`` with two GPUs).

    Example:
        >>> check_device(torch.device("cpu"))
        'cpu'
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    if parsed.type == "cpu":
        return str(device)
    count = _count(parsed.type)
    if count == 0:
        raise ConfigError(f"device {str(device)!r} is not available here (no {parsed.type} device found); use 'cpu'")
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(f"device {str(device)!r} is not available here: only {count} {parsed.type} device(s)")
    return str(device)
