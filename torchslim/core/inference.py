"""Inference tensors (made under ``torch.inference_mode``) and the caches that key on version counters.

Modules that cache Python numbers or packed weights key them on ``(data_ptr, version)``: a tensor's version
counter moves whenever it is written in place (``load_state_dict``, ``copy_``, ``fill_``), so the cache is
rebuilt after a load and after a replaced buffer. Inference tensors keep no version counter (reading it
raises) and may be written in place inside ``torch.inference_mode`` unseen, so a cache keyed on them could go
stale. Hence :func:`~torchslim.api.compress_` and :func:`~torchslim.load` run outside inference mode
(:func:`outside_inference_mode`): every buffer they make is an ordinary tensor, and a model built under
inference mode has its inference tensors replaced by ordinary copies first (:func:`ordinary_tensors_`).
:func:`version_key` gives an inference tensor version ``-1``, so for one a user made itself only a replaced
tensor rebuilds a cache.

Example:
    >>> import torch, torch.nn as nn
    >>> t = torch.zeros(2)
    >>> before = version_key((t,))
    >>> _ = t.fill_(1.0)
    >>> version_key((t,)) == before
    False
    >>> with torch.inference_mode():
    ...     m = nn.Linear(2, 2)
    ...     with outside_inference_mode(m):
    ...         made = torch.zeros(2)
    >>> m.weight.is_inference(), made.is_inference()
    (False, False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

__all__ = ["ordinary_tensors_", "outside_inference_mode", "version_key"]


def version_key(tensors: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """``(data_ptr, version)`` of each tensor, with version ``-1`` for inference tensors."""
    tensors = tuple(tensors)
    try:  # the common case first: a list comprehension without a per-tensor is_inference() (hot per-call paths)
        return tuple([(t.data_ptr(), t._version) for t in tensors])
    except RuntimeError:  # "Inference tensors do not track version counter"
        return tuple([(t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors])


def ordinary_tensors_(model: nn.Module) -> nn.Module:
    """Replace ``model``'s inference-tensor parameters and buffers by ordinary copies (same values, in place).

    A parameter is replaced by a new ``nn.Parameter`` (an inference ``Parameter`` keeps no version counter even
    with its ``.data`` swapped); one shared by several modules (tied weights) stays shared.
    """
    done: dict[int, torch.Tensor] = {}
    with torch.inference_mode(False):
        for module in model.modules():
            for slots, make in ((module._parameters, _parameter), (module._buffers, torch.Tensor.clone)):
                for name, t in slots.items():
                    if t is not None and t.is_inference():
                        if id(t) not in done:
                            done[id(t)] = make(t)
                        slots[name] = done[id(t)]
    return model


def _parameter(p: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


@contextlib.contextmanager
def outside_inference_mode(model: nn.Module | None = None) -> Iterator[None]:
    """Leave ``torch.inference_mode`` for the block, if it is on (grad mode as in plain Python); ``model``'s inference
    tensors, if any, become ordinary tensors first, so the block may write them in place."""
    if model is not None:
        ordinary_tensors_(model)
    if not torch.is_inference_mode_enabled():
        yield
        return
    with torch.inference_mode(False):
        yield
