"""The data pipeline's own random stream, so that a resumed run reads the same batches as an uninterrupted one.

A ``DataLoader(shuffle=True)`` without a ``generator`` (and any augmentation that calls ``torch.rand``)
draws from torch's global CPU generator, which dropout also draws from. Resuming from a checkpoint
restores the training draws (the saved RNG state), but the epochs before the checkpoint are read again
to bring the pipeline to the same point, and those reads would draw from the restored state instead of
the one they saw the first time: another shuffle, another model. :class:`DataStream` keeps the
pipeline's draws in a second stream: the global generator is switched to the data state around every
call into the pipeline and back to the training state afterwards. The data stream starts from the run's
seed on every run, so reading the epochs again reproduces it exactly.

Example:
    >>> import torch
    >>> def noisy():  # a pipeline that draws from the global generator
    ...     return (torch.rand(1) for _ in range(2))
    >>> _ = torch.manual_seed(1)
    >>> first = torch.rand(1)
    >>> _ = torch.manual_seed(1)
    >>> batches = list(DataStream(seed=0).iterate(noisy))
    >>> torch.equal(torch.rand(1), first)  # the training stream did not move
    True
    >>> again = list(DataStream(seed=0).iterate(noisy))  # another run, other draws in between
    >>> all(torch.equal(a, b) for a, b in zip(batches, again))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["DATA_SEED_OFFSET", "DataStream"]

# The data stream is seeded with the run's seed plus this, so that it does not repeat the training draws.
DATA_SEED_OFFSET = 104_729


class DataStream:
    """torch's global CPU random state of the data pipeline, kept apart from the training's."""

    def __init__(self, seed: int) -> None:
        self.state = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET).get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block with the data state in torch's global generator; the training state is put back after."""
        training = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(training)

    def iterate(self, make: Callable[[], Iterable[Any]]) -> Iterator[Any]:
        """The batches of ``make()``; ``make`` is called now and every batch is drawn, with the data state."""
        with self.active():
            batches = iter(make())
        return self._draw(batches)

    def _draw(self, batches: Iterator[Any]) -> Iterator[Any]:
        while True:
            with self.active():
                batch = next(batches, _END)
            if batch is _END:
                return
            yield batch


_END = object()
