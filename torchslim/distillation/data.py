"""Training data for distillation: batches from a ``Dataset`` (via ``DistributedSampler``) or a callable.

A batch is ``(inputs, target)``, ``(inputs,)`` or bare inputs (no labels, e.g. unlabeled text for
embedding distillation). Inputs are a tensor, a tuple of positional inputs, or a dict of keyword
inputs (a tokenizer's output).

Example:
    >>> import torch
    >>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1].tolist()
    [0, 1]
    >>> split_batch({"input_ids": torch.zeros(2, 4)})[1] is None
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from torchslim.distillation.config import DistillConfig
from torchslim.distillation.distributed import DistInfo, shard_batch
from torchslim.errors import ConfigError
from torchslim.training import _first_epoch

__all__ = ["Data", "Epochs", "batch_size_of", "call_model", "split_batch", "to_device"]

Data = Callable[[], Iterable[Any]] | Dataset


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` from a batch: a pair, a 1-tuple (no label), or bare inputs (a tensor or dict).

    Raises:
        ValueError: a tuple of three or more items (ambiguous: wrap positional inputs in a tuple).
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ValueError(f"a batch must be (inputs, target), (inputs,) or bare inputs; got {len(batch)} items")
    return batch, None


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor (in nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict (tokenizer output), else ``model(inputs)``."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def batch_size_of(inputs: Any) -> int:
    """The number of samples in ``inputs`` (dim 0 of its first tensor)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    if isinstance(inputs, (tuple, list)) and inputs:
        return batch_size_of(inputs[0])
    return 0


class Epochs:
    """The epochs of the training data, asked for in order; knows the number of steps per epoch.

    A ``Dataset`` is batched by ``config.batch_size`` (the *global* batch: each of N processes takes
    ``batch_size / N`` through a ``DistributedSampler``). A callable of ready-made batches is called
    once per epoch; under DDP every process iterates the same seeded batches and keeps its chunk.
    Either way N processes see the global batches of one process.

    Raises:
        ConfigError: unsupported data, no batches, or a batch size that does not divide over the processes.
    """

    def __init__(self, data: Data, config: DistillConfig, seed: int, info: DistInfo) -> None:
        self.data = data
        self.info = info
        self.first: Iterable[Any] | None = None
        self.calls: Callable[[], Iterable[Any]] | None = None
        if isinstance(data, Dataset):
            if config.batch_size % info.world_size:
                raise ConfigError(
                    f"batch_size {config.batch_size} is the global batch and must divide evenly over "
                    f"{info.world_size} processes"
                )
            # Shuffled with seed + epoch: one process gets a plain seeded shuffle, N processes its slices.
            self.sampler = DistributedSampler(
                data, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
            )
            self.loader = DataLoader(
                data,
                batch_size=config.batch_size // info.world_size,
                sampler=self.sampler,
                # Own generator: DataLoader would otherwise draw its base seed from the global RNG on
                # every epoch, shifting dropout's random stream and breaking exact resume.
                generator=torch.Generator().manual_seed(seed),
            )
            self.steps_per_epoch = len(self.loader)
        elif callable(data):
            self.calls = data
            # Reuses fit_'s counting: a sized iterable is kept as epoch 1, an unsized one costs a pass.
            self.first, self.steps_per_epoch = _first_epoch(data)
        else:
            raise ConfigError(
                f"data must be a torch Dataset or a callable returning an iterable of batches, got {type(data).__name__}"
            )
        if self.steps_per_epoch == 0:
            raise ConfigError("the training data yielded no batches")

    @property
    def stateful(self) -> bool:
        """True for a callable: its pipeline may hold state (seeds) that only iterating advances."""
        return self.calls is not None

    def epoch(self, index: int) -> Iterator[Any]:
        """Epoch ``index`` (0-based); ask for every index in order, also for epochs skipped on resume."""
        if self.calls is None:
            self.sampler.set_epoch(index)
            return iter(self.loader)
        data = self.first if (index == 0 and self.first is not None) else self.calls()
        self.first = None
        return (shard_batch(b, self.info) for b in data)

    def peek(self) -> Any:
        """This process's share of one batch, to size projections with, leaving the epochs as they were."""
        if self.calls is None:
            # A Dataset item is one sample: collate adds the batch axis to every tensor.
            return torch.utils.data.default_collate([self.data[0]])  # type: ignore[index]
        source = self.first if self.first is not None else self.calls()
        return shard_batch(next(iter(source)), self.info)
