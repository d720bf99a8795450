"""The one place that turns a user's batch into a model call.

Batches come as users hold them; each is read as follows.

- a tensor: one positional input;
- a dict, any ``Mapping`` or a transformers ``BatchEncoding``: keyword inputs; the ``labels`` /
  ``label`` keys are the target and are never passed to the model;
- a tuple or list whose first item is itself a tuple, list or mapping: ``(inputs, target)``, with
  ``inputs`` read as above (``((x, mask), y)``, ``({"input_ids": ...}, y)``);
- any other tuple or list (``(x,)``, ``(x, mask)``, a ``DataLoader(TensorDataset(X, Y))``'s ``[X, Y]``):
  positional items. **For a model call** (calibration, evaluation, example inputs) the model's
  ``forward`` signature decides which items are inputs: it gets as many leading items as it has
  positional parameters, and the trailing ones are targets (``forward(x)`` with ``[X, Y]`` gets ``X``;
  a ``forward(*args)`` gets every item). **For training** the last item of two or more is the target.
- :class:`ModelInputs`: inputs already mapped (``args``, ``kwargs``), passed as they are;
- with an ``input_fn``, ``input_fn(batch)`` returns ``(args, kwargs)`` or ``(args, kwargs, target)``
  and nothing above applies: use it for any other layout, or when a ``forward`` with optional
  positional parameters (``forward(x, mask=None)``) must not receive the target.

A batch that cannot be passed to ``forward`` raises :class:`~torchslim.errors.ConfigError` naming the
batch and suggesting ``input_fn``.

Example:
    >>> import torch, torch.nn as nn
    >>> x, y = torch.ones(2, 3), torch.tensor([0, 1])
    >>> call_model(nn.Linear(3, 1), [x, y]).shape  # forward(input): y is the target
    torch.Size([2, 1])
    >>> inputs, target = split_inputs_target({"input_ids": x, "labels": y})
    >>> sorted(inputs), target.tolist()
    (['input_ids'], [0, 1])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torchslim.errors import ConfigError

__all__ = [
    "LABEL_KEYS",
    "InputFn",
    "ModelInputs",
    "batch_size_of",
    "call_model",
    "describe_batch",
    "model_inputs",
    "split_inputs_target",
    "to_device",
]

LABEL_KEYS = ("labels", "label")
"""Keys of a mapping batch that hold the target, not a model input."""

InputFn = Callable[[Any], tuple[Any, ...]]
"""``input_fn(batch) -> (args, kwargs)`` or ``(args, kwargs, target)``."""

_HINT = "pass input_fn=lambda batch: (args, kwargs) (Context(input_fn=...)) to say how a batch maps to forward"


@dataclass(frozen=True)
class ModelInputs:
    """Inputs already mapped to one call: ``model(*args, **kwargs)``.

    Example:
        >>> ModelInputs((1,), {"b": 2}).call(lambda a, b: a + b)
        3
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call(self, fn: Callable[..., Any]) -> Any:
        """``fn(*args, **kwargs)``."""
        return fn(*self.args, **self.kwargs)


def describe_batch(batch: Any) -> str:
    """A short description of a batch's layout for error messages.

    Example:
        >>> import torch
        >>> describe_batch([torch.zeros(2), torch.zeros(2)])
        'a list of 2 items (Tensor, Tensor)'
    """
    if isinstance(batch, ModelInputs):
        return f"{len(batch.args)} positional inputs and keyword inputs {sorted(batch.kwargs)}"
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {', '.join(map(str, batch))}"
    if isinstance(batch, (tuple, list)):
        kinds = ", ".join(type(b).__name__ for b in batch[:4]) + (", ..." if len(batch) > 4 else "")
        return f"a {type(batch).__name__} of {len(batch)} items ({kinds})"
    return f"a {type(batch).__name__}"


def _is_structured(value: Any) -> bool:
    return isinstance(value, (tuple, list, Mapping, ModelInputs))


def _keyword_split(batch: Mapping) -> tuple[dict[str, Any], Any]:
    kwargs = {str(k): v for k, v in batch.items() if k not in LABEL_KEYS}
    if not kwargs:
        raise ConfigError(f"a batch has no model inputs: {describe_batch(batch)}; {_HINT}")
    target = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    return kwargs, target


def _inputs_part(item: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of the inputs item of a batch: a mapping gives up its label keys."""
    return _keyword_split(item) if isinstance(item, Mapping) else (item, None)


def _from_input_fn(result: Any, batch: Any) -> tuple[ModelInputs, Any]:
    if not (isinstance(result, (tuple, list)) and len(result) in (2, 3)):
        raise ConfigError(
            f"input_fn must return (args, kwargs) or (args, kwargs, target); got {describe_batch(result)}"
        )
    args, kwargs = result[0], result[1]
    if isinstance(args, torch.Tensor):
        args = (args,)
    if not isinstance(args, (tuple, list)) or (kwargs is not None and not isinstance(kwargs, Mapping)):
        raise ConfigError(
            f"input_fn must return (args: tuple, kwargs: dict[, target]); got args {type(args).__name__} "
            f"and kwargs {type(kwargs).__name__} for {describe_batch(batch)}"
        )
    return ModelInputs(tuple(args), dict(kwargs or {})), (result[2] if len(result) == 3 else None)


def split_inputs_target(batch: Any, input_fn: InputFn | None = None) -> tuple[Any, Any]:
    """``(inputs, target)`` of a training batch; ``target`` is None when the batch has none.

    ``inputs`` is what :func:`call_model` takes: a tensor, a tuple of positional inputs, a dict of
    keyword inputs or :class:`ModelInputs`. A tuple/list of two or more plain items is
    ``(*positional inputs, target)``; see the module docstring for every layout.

    Raises:
        ConfigError: an empty batch, a mapping with only labels, or an ``input_fn`` result of the wrong shape.

    Example:
        >>> import torch
        >>> x, m, y = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1])
        >>> inputs, target = split_inputs_target((x, m, y))
        >>> len(inputs), target.tolist()
        (2, [0, 1])
    """
    if isinstance(batch, ModelInputs):
        return batch, None
    if input_fn is not None:
        return _from_input_fn(input_fn(batch), batch)
    if isinstance(batch, Mapping):
        return _keyword_split(batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError(f"a batch is empty; {_HINT}")
        if len(batch) == 1:
            return _inputs_part(batch[0])
        if _is_structured(batch[0]):  # (inputs, target...)
            inputs, inner = _inputs_part(batch[0])
            rest = batch[1] if len(batch) == 2 else tuple(batch[1:])
            return inputs, (rest if inner is None else inner)
        return (batch[0] if len(batch) == 2 else tuple(batch[:-1])), batch[-1]
    return batch, None


def _signature(model: Callable[..., Any]) -> inspect.Signature | None:
    fn = getattr(model, "forward", model)
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, some scripted modules
        return None


def _positional_capacity(sig: inspect.Signature | None) -> int | None:
    """How many positional arguments ``forward`` takes; None: any number (``*args`` or unknown)."""
    if sig is None:
        return None
    kinds = [p.kind for p in sig.parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(k in positional for k in kinds)


def _params_text(sig: inspect.Signature) -> str:
    names = list(sig.parameters)
    return ", ".join(names[:6] + (["..."] if len(names) > 6 else []))


def model_inputs(model: Callable[..., Any], batch: Any, input_fn: InputFn | None = None) -> ModelInputs:
    """The call ``model`` gets for ``batch`` (targets left out), by the rules of the module docstring.

    Raises:
        ConfigError: an empty batch, None or a string, or a mapping with only labels.

    Example:
        >>> import torch, torch.nn as nn
        >>> len(model_inputs(nn.Linear(3, 1), (torch.ones(2, 3), torch.tensor([0, 1]))).args)
        1
    """
    if isinstance(batch, ModelInputs):
        return batch
    if input_fn is not None:
        return _from_input_fn(input_fn(batch), batch)[0]
    if isinstance(batch, Mapping):
        return ModelInputs((), _keyword_split(batch)[0])
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError(f"a batch is empty; {_HINT}")
        if _is_structured(batch[0]):  # (inputs, target...) or (inputs,)
            return model_inputs(model, batch[0] if isinstance(batch[0], (Mapping, ModelInputs)) else tuple(batch[0]))
        capacity = _positional_capacity(_signature(model))
        return ModelInputs(tuple(batch if capacity is None else batch[:capacity]))
    if batch is None or isinstance(batch, (str, bytes)):
        raise ConfigError(f"cannot pass {describe_batch(batch)} to the model; {_HINT}")
    return ModelInputs((batch,))


def call_model(model: Callable[..., Any], batch: Any, input_fn: InputFn | None = None) -> Any:
    """Run ``model`` on ``batch`` (a batch of any layout in the module docstring, targets left out).

    Raises:
        ConfigError: ``forward`` cannot take the inputs (the message names the batch and the parameters).

    Example:
        >>> import torch, torch.nn as nn
        >>> call_model(nn.Linear(3, 1), torch.ones(2, 3)).shape
        torch.Size([2, 1])
    """
    inputs = model_inputs(model, batch, input_fn)
    try:
        return inputs.call(model)
    except TypeError as e:
        sig = _signature(model)
        if sig is None:
            raise
        try:
            sig.bind(*inputs.args, **inputs.kwargs)
        except TypeError as bad:
            raise ConfigError(
                f"forward({_params_text(sig)}) cannot take {describe_batch(batch)}: {bad}; {_HINT}"
            ) from e
        raise


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor (in nested tuples, lists, mappings, :class:`ModelInputs`) on ``device``.

    Mappings come back as plain dicts; tuples, named tuples and lists keep their type.

    Example:
        >>> import torch
        >>> to_device({"x": (torch.zeros(1),)}, "cpu")["x"][0].device.type
        'cpu'
    """
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, ModelInputs):
        return ModelInputs(to_device(value.args, device), to_device(value.kwargs, device))
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def batch_size_of(value: Any) -> int:
    """The number of samples in ``value``: dim 0 of its first tensor with a dimension (0 if none).

    A bare 0-dim tensor is one sample.

    Example:
        >>> import torch
        >>> batch_size_of({"input_ids": torch.zeros(4, 7)}), batch_size_of([1.0])
        (4, 0)
    """
    if isinstance(value, torch.Tensor) and not value.dim():
        return 1
    return _nested_batch_size(value)


def _nested_batch_size(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() else 0
    if isinstance(value, ModelInputs):
        value = [*value.args, *value.kwargs.values()]
    elif isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for v in value:
            n = _nested_batch_size(v)
            if n:
                return n
    return 0
