"""Structure log: how a compressed model differs from what its factory builds, as replayable JSON data.

Every technique that changes a model's *structure* (removes channels, swaps a Linear for a quantized
module, casts dtypes, wraps with hooks) records one op with :func:`record_op` and registers a replay
function with :func:`register_replay`. ``ts.save`` writes the ops to ``structure.json``; ``ts.load``
builds the model with the factory, replays the ops in order (which rebuilds the exact shapes and
module classes, with empty tensors), then loads the safetensors weights strictly. Nothing is pickled.

Example:
    >>> import torch.nn as nn
    >>> m = nn.Linear(2, 2)
    >>> record_op(m, "example-op", {"path": ""})
    >>> structure_ops(m)
    [{'op': 'example-op', 'data': {'path': ''}}]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch.nn as nn

from torchslim.errors import RegistryError, UnsafeInputError

_ATTR = "_torchslim_structure"
ReplayFn = Callable[[nn.Module, dict[str, Any]], nn.Module]
_REPLAYS: dict[str, ReplayFn] = {}
_LISTENERS: list[Callable[[nn.Module], None]] = []


def record_op(model: nn.Module, op: str, data: dict[str, Any]) -> None:
    """Append a structural op (JSON-able ``data``) to the model's structure log."""
    if op not in _REPLAYS and not op.startswith("example-"):
        raise RegistryError(f"no replay registered for structure op {op!r}; call register_replay first")
    model.__dict__.setdefault(_ATTR, []).append({"op": op, "data": copy.deepcopy(data)})
    for listener in _LISTENERS:
        listener(model)


def add_record_listener(fn: Callable[[nn.Module], None]) -> None:
    """Call ``fn(model)`` after every :func:`record_op` (and replayed op) on ``model``; added once."""
    if fn not in _LISTENERS:
        _LISTENERS.append(fn)


def structure_ops(model: nn.Module) -> list[dict[str, Any]]:
    """A copy of the model's structure log (empty for an uncompressed model)."""
    return copy.deepcopy(model.__dict__.get(_ATTR, []))


def register_replay(op: str) -> Callable[[ReplayFn], ReplayFn]:
    """Decorator: ``fn(model, data) -> model`` rebuilds the op's structure on a fresh model."""

    def deco(fn: ReplayFn) -> ReplayFn:
        if op in _REPLAYS:
            raise RegistryError(f"a replay for structure op {op!r} is already registered")
        _REPLAYS[op] = fn
        return fn

    return deco


def op_layers(model: nn.Module, op: str, data: Any) -> Iterator[tuple[str, nn.Module, Any]]:
    """``(path, module, value)`` for each entry of an op's ``{"layers": {path: value}}`` data, in order.

    For replay functions: malformed data or a path not in ``model`` raises
    :class:`~torchslim.errors.UnsafeInputError` naming ``op``; ``value`` is the caller's to check. Each
    path is looked up when its turn comes, after the entries before it have been replayed.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> [(path, type(mod).__name__, rank) for path, mod, rank in op_layers(m, "low-rank", {"layers": {"0": 1}})]
        [('0', 'Linear', 1)]
        >>> list(op_layers(m, "low-rank", {"layers": {"9": 1}}))
        Traceback (most recent call last):
        ...
        torchslim.errors.UnsafeInputError: low-rank op names '9', not in this model
    """
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict):
        raise UnsafeInputError(f"malformed {op} structure op")
    for path, value in layers.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise UnsafeInputError(f"{op} op names {path!r}, not in this model") from None
        yield path, module, value


def replay_ops(model: nn.Module, ops: list[dict[str, Any]]) -> nn.Module:
    """Replay a structure log on a freshly built model (weights are loaded afterwards)."""
    for i, entry in enumerate(ops):
        if not isinstance(entry, dict) or set(entry) != {"op", "data"} or entry["op"] not in _REPLAYS:
            raise UnsafeInputError(f"structure op #{i} is malformed or unknown: {str(entry)[:200]}")
        before = len(model.__dict__.get(_ATTR, []))
        model = _REPLAYS[entry["op"]](model, entry["data"])
        log = model.__dict__.get(_ATTR, [])
        if len(log) != before + 1 or log[-1] != entry:  # a replay re-applying the technique records it itself
            record_op(model, entry["op"], entry["data"])
    return model
