"""Data sources as users hold them, made into what transforms use: calibration lists and epoch callables.

- Calibration: a list, a ``DataLoader`` or any iterable of batches (a one-shot generator too) is read
  **once** into a list, so multi-pass algorithms (GPTQ's layer-by-layer passes, SmoothQuant's
  search) see identical batches. A single tensor or mapping is one batch. Pass only the calibration
  subset: everything the iterable yields is kept in memory.
- Training data: a zero-argument callable returning a fresh iterable per epoch, or a re-iterable
  (``DataLoader``, list) that is iterated anew every epoch (a ``DataLoader`` with ``shuffle=True``
  reshuffles). A one-shot iterator or generator cannot give a second epoch and is refused.
- With an ``input_fn``, every batch is mapped through it once, as it is read: calibration batches
  become :class:`~torchslim.core.batches.ModelInputs`, training batches ``(ModelInputs, target)``.
  Mapped batches are never mapped again.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(torch.zeros(6, 3), torch.zeros(6)), batch_size=4)
    >>> [len(b[0]) for b in calibration_list(loader)]
    [4, 2]
    >>> epochs = epoch_source(loader)
    >>> sum(1 for _ in epochs()), sum(1 for _ in epochs())
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from torchslim.core.batches import InputFn, ModelInputs, split_inputs_target
from torchslim.errors import ConfigError

__all__ = ["EpochSource", "MappedEpochs", "calibration_list", "epoch_source"]

EpochSource = Callable[[], Iterable[Any]]


def _is_dataset(data: Any) -> bool:
    """A map-style ``Dataset`` yields single samples, not batches."""
    return isinstance(data, Dataset) and not isinstance(data, Iterable)


def calibration_list(data: Any, input_fn: InputFn | None = None) -> list[Any] | None:
    """Calibration batches read once into a list (None stays None).

    Raises:
        ConfigError: a map-style ``Dataset`` (samples, not batches), a string, or a non-iterable.

    Example:
        >>> import torch
        >>> len(calibration_list((torch.zeros(2, 3) for _ in range(3))))
        3
    """
    if data is None:
        return None
    if isinstance(data, (torch.Tensor, Mapping, ModelInputs)):
        batches = [data]
    elif _is_dataset(data):
        raise ConfigError(
            f"calibration is a {type(data).__name__} of single samples; pass batches: "
            "DataLoader(dataset, batch_size=...) or a list of batches"
        )
    elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ConfigError(
            f"calibration must be a list, a DataLoader or an iterable of batches; got {type(data).__name__}"
        )
    else:
        batches = data if type(data) is list else list(data)
    if input_fn is not None:
        batches = [split_inputs_target(b, input_fn)[0] for b in batches]
    return batches


class _Reiterable:
    """A re-iterable (``DataLoader``, list) as an epoch callable: every call iterates it anew."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data

    def __call__(self) -> Iterable[Any]:
        return self.data

    def __repr__(self) -> str:
        return f"epochs of {type(self.data).__name__}"


class _Mapped:
    """One epoch's batches, each mapped to ``(ModelInputs, target)``; sized when the source is."""

    def __init__(self, data: Iterable[Any], input_fn: InputFn) -> None:
        self.data, self.input_fn = data, input_fn

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for batch in self.data:
            if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], ModelInputs):
                yield batch
            else:
                yield split_inputs_target(batch, self.input_fn)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]  # TypeError when unsized, as len() would


class MappedEpochs:
    """An epoch callable whose batches go through ``input_fn``: ``(ModelInputs, target)`` pairs."""

    def __init__(self, source: EpochSource, input_fn: InputFn) -> None:
        self.source, self.input_fn = source, input_fn

    def __call__(self) -> Iterable[tuple[Any, Any]]:
        return _Mapped(self.source(), self.input_fn)


def epoch_source(data: Any, input_fn: InputFn | None = None) -> EpochSource | None:
    """Training data as a zero-argument callable returning one epoch's batches (None stays None).

    Raises:
        ConfigError: a one-shot iterator or generator (no second epoch), a map-style ``Dataset``, or
            anything neither callable nor iterable.

    Example:
        >>> import torch
        >>> epochs = epoch_source([(torch.zeros(2, 3), torch.tensor([0, 1]))])
        >>> len(epochs())
        1
    """
    if data is None:
        return None
    if isinstance(data, MappedEpochs):  # already mapped (a Context rebuilt by dataclasses.replace, fit_)
        if input_fn is None or input_fn is data.input_fn:
            return data
        data = data.source
    if isinstance(data, Iterator):
        raise ConfigError(
            f"train_data is a one-shot {type(data).__name__}: it cannot give a second epoch; pass a "
            "DataLoader, a list of batches, or a callable returning a fresh iterable per epoch"
        )
    if _is_dataset(data):
        raise ConfigError(
            f"train_data is a {type(data).__name__} of single samples; pass "
            "DataLoader(dataset, batch_size=..., shuffle=True) or a callable returning batches"
        )
    if isinstance(data, (str, bytes, torch.Tensor, Mapping)):
        raise ConfigError(
            f"train_data must be a DataLoader, a list of batches or a callable returning them; got {type(data).__name__}"
        )
    if callable(data):
        source: EpochSource = data
    elif isinstance(data, Iterable):
        source = _Reiterable(data)
    else:
        raise ConfigError(
            f"train_data must be a DataLoader, a list of batches or a callable returning them; got {type(data).__name__}"
        )
    return source if input_fn is None else MappedEpochs(source, input_fn)
