"""Training data for distillation: batches from a ``Dataset`` (via ``DistributedSampler``) or a callable.

A batch is ``(inputs, target)``, ``(inputs,)`` or bare inputs (no labels, e.g. unlabeled text for
embedding distillation). Inputs are a tensor, a tuple of positional inputs, or a dict of keyword
inputs (a tokenizer's output; its ``labels`` key is the target). Batches are read by
:mod:`torchslim.core.batches`; ``split_batch``, ``to_device``, ``call_model`` and ``batch_size_of`` are
its helpers under their distillation names.

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
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from torchslim.core.batches import batch_size_of, call_model, split_inputs_target, to_device
from torchslim.core.sources import epoch_source
from torchslim.distillation.config import DistillConfig
from torchslim.distillation.distributed import DistInfo, shard_batch
from torchslim.errors import ConfigError
from torchslim.training import first_epoch

__all__ = ["Data", "Epochs", "batch_size_of", "call_model", "split_batch", "to_device"]

Data = Callable[[], Iterable[Any]] | Iterable[Any] | Dataset


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a training batch; :func:`torchslim.core.batches.split_inputs_target`."""
    return split_inputs_target(batch)


class Epochs:
    """The epochs of the training data, asked for in order; knows the number of steps per epoch.

    A ``Dataset`` is batched by ``config.batch_size`` (the *global* batch: each of N processes takes
    ``batch_size / N`` through a ``DistributedSampler``). A callable of ready-made batches is called
    once per epoch (a ``DataLoader`` or a list is iterated anew each epoch); under DDP every process
    iterates the same seeded batches and keeps its chunk.
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
        else:
            # A callable, a DataLoader or a list of batches (epoch_source refuses anything else).
            self.calls = epoch_source(data)
            if self.calls is None:
                raise ConfigError("distillation needs training data: a DataLoader, a Dataset or a callable")
            # Reuses fit_'s counting: a sized iterable is kept as epoch 1, an unsized one costs a pass.
            self.first, self.steps_per_epoch = first_epoch(self.calls)
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
