"""The workload interface: a model, its data, and how its quality is measured.

A workload hands out a ready :class:`~torchslim.core.context.Context` so that every technique,
measurement, recipe and benchmark sees the same inputs.

Example:
    >>> from torchslim.workloads import get_workload
    >>> wl = get_workload("digits")
    >>> wl.metric
    'accuracy'
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch.nn as nn

from torchslim.core.context import Context


def cache_dir() -> Path:
    """Where trained weights and features are cached: ``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``."""
    root = os.environ.get("TORCHSLIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torchslim"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Workload(ABC):
    """A named model + data + quality metric.

    Attributes:
        name: the workload name used on the command line.
        metric: the primary quality key that ``evaluate`` returns (e.g. ``"accuracy"``).
        higher_is_better: direction of ``metric``.
    """

    name: str = ""
    metric: str = ""
    higher_is_better: bool = True

    @abstractmethod
    def model(self) -> nn.Module:
        """The trained baseline model (trained and cached on first use), in eval mode."""

    @abstractmethod
    def factory(self) -> nn.Module:
        """A freshly built, untrained model of the baseline architecture (for reloading weights)."""

    @abstractmethod
    def example_inputs(self) -> tuple[Any, ...]:
        """Positional inputs for tracing, MACs and latency."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Quality figures of ``model`` on ``split``; ``metric`` is among the keys."""

    def calibration(self, n_batches: int = 8) -> list[Any]:
        """Calibration batches (each a tuple of positional inputs); default: none."""
        return []

    def train_data(self) -> Callable[[], Iterable[Any]] | None:
        """A callable giving a fresh iterable of ``(inputs, target)`` batches, or None."""
        return None

    def context(self, seed: int = 0) -> Context:
        """A Context wired with this workload's inputs, data and test-split evaluation."""
        return Context(
            example_inputs=self.example_inputs(),
            calibration=self.calibration(),
            train_data=self.train_data(),
            eval_fn=lambda m: self.evaluate(m, "test"),
            seed=seed,
        )
