"""Example inputs for export: positional and keyword forms, dynamic dimensions, and resized copies.

An export takes its example inputs as a tensor, a tuple of positional arguments, or a mapping of keyword
arguments (a Hugging Face ``BatchEncoding`` included); a 1-tuple holding a mapping is read as keywords.
:func:`split_inputs` turns any of these into ``(args, kwargs)``.

Dynamic dimensions: dim 0 of every tensor whose dim 0 equals the batch size (that of the first tensor);
dim 1 too for token inputs: integer tensors of rank 2 and keyword inputs named like
``input_ids`` / ``attention_mask``. :func:`dynamic_shapes` marks them ``Dim.AUTO``, so ``torch.export``
keeps them symbolic unless the model fixes them (:func:`static_dims` then tells which it fixed).

Example:
    >>> import torch
    >>> ex = ExampleInputs.of({"input_ids": torch.zeros(2, 5, dtype=torch.long)})
    >>> ex.batch_size, ex.resized(batch=3, seq=4).kwargs["input_ids"].shape
    (2, torch.Size([3, 4]))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from torchslim.errors import ConfigError

__all__ = ["TOKEN_INPUT_NAMES", "ExampleInputs", "is_token_input", "split_inputs"]

# Keyword inputs whose dim 1 is a sequence length (Hugging Face's names).
TOKEN_INPUT_NAMES = frozenset(
    {"input_ids", "attention_mask", "token_type_ids", "position_ids", "decoder_input_ids", "decoder_attention_mask"}
)


def split_inputs(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` from a tensor, a tuple/list of positional inputs, or a mapping of keyword inputs.

    Example:
        >>> import torch
        >>> split_inputs(torch.ones(1))[0][0].shape, split_inputs(({"x": 1},))
        (torch.Size([1]), ((), {'x': 1}))
    """
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        if len(example) == 1 and isinstance(example[0], Mapping):
            return (), dict(example[0])
        return tuple(example), {}
    raise ConfigError(
        f"example inputs must be a tensor, a tuple of inputs or a dict of keyword inputs, not {type(example).__name__}"
    )


def is_token_input(name: str, t: torch.Tensor) -> bool:
    """Whether input ``name`` holds tokens (dim 1 a sequence): a Hugging Face token name, or integers of rank 2."""
    integer = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
    return name in TOKEN_INPUT_NAMES or (integer and t.ndim == 2)


@dataclass(frozen=True)
class ExampleInputs:
    """Positional and keyword example inputs of a model, with the batch size read from the first tensor."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, example: Any) -> ExampleInputs:
        """Wrap any form :func:`split_inputs` accepts."""
        args, kwargs = split_inputs(example)
        return cls(args, kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors, flattened in ``(args, kwargs)`` order (the order of an exported ONNX graph's inputs)."""
        return [t for t in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(t, torch.Tensor)]

    @property
    def batch_size(self) -> int | None:
        """Dim 0 of the first tensor of rank ≥ 1 (None when there is none)."""
        return next((t.shape[0] for t in self.tensors() if t.ndim >= 1), None)

    @property
    def seq_len(self) -> int | None:
        """Dim 1 of the first token input (see the module docstring), None without token inputs."""
        return next((t.shape[1] for name, t in self._named() if self._dynamic_axes(name, t) == (0, 1)), None)

    def _named(self) -> list[tuple[str, torch.Tensor]]:
        out = [(f"arg{i}", t) for i, a in enumerate(self.args) for t in _leaves(a)]
        return out + [(k, t) for k, v in self.kwargs.items() for t in _leaves(v)]

    def _dynamic_axes(self, name: str, t: torch.Tensor) -> tuple[int, ...]:
        if t.ndim == 0 or t.shape[0] != self.batch_size:
            return ()
        return (0, 1) if t.ndim >= 2 and is_token_input(name, t) else (0,)

    def resized(self, batch: int | None = None, seq: int | None = None) -> ExampleInputs:
        """A copy with the batch (and token sequence) dimensions resized by cycling the existing rows/columns.

        Example:
            >>> import torch
            >>> ExampleInputs.of((torch.arange(2).reshape(2, 1),)).resized(batch=3).args[0].flatten().tolist()
            [0, 1, 0]
        """

        def resize(name: str, v: Any) -> Any:
            if not isinstance(v, torch.Tensor):
                return v
            axes = self._dynamic_axes(name, v)
            for axis, size in ((0, batch), (1, seq)):
                if axis in axes and size is not None and size != v.shape[axis]:
                    v = v.index_select(axis, torch.arange(size, device=v.device) % v.shape[axis])
            return v

        args = tuple(pytree.tree_map(lambda v, n=f"arg{i}": resize(n, v), a) for i, a in enumerate(self.args))
        kwargs = {k: pytree.tree_map(lambda v, n=k: resize(n, v), a) for k, a in self.kwargs.items()}
        return ExampleInputs(args, kwargs)

    def dynamic_shapes(self, model: nn.Module) -> dict[str, Any]:
        """``torch.export`` ``dynamic_shapes``: ``Dim.AUTO`` on the batch and token-sequence dimensions.

        Keyed by ``model.forward``'s parameter names, as ``torch.export`` binds the inputs.
        """
        try:
            bound = inspect.signature(model.forward).bind(*self.args, **self.kwargs).arguments
        except TypeError as e:
            raise ConfigError(f"example inputs do not match {type(model).__name__}.forward: {e}") from None
        positional = {id(a): f"arg{i}" for i, a in enumerate(self.args)}

        def spec(name: str, value: Any) -> Any:
            def one(t: Any) -> Any:
                if not isinstance(t, torch.Tensor):
                    return None
                axes = self._dynamic_axes(name, t)
                return {a: Dim.AUTO for a in axes} or None

            return pytree.tree_map(one, value)

        out: dict[str, Any] = {}
        for pname, value in bound.items():
            kind = inspect.signature(model.forward).parameters[pname].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                out[pname] = tuple(spec(positional.get(id(v), pname), v) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out[pname] = {k: spec(k, v) for k, v in value.items()}
            else:
                out[pname] = spec(positional.get(id(value), pname), value)
        return out


def _leaves(value: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]
