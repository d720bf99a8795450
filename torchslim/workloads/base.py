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

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.context import Context
from torchslim.io.atomic import atomic_file

log = logging.getLogger(__name__)


class ShuffledBatches:
    """One seeded pass over ``(x, y)`` in shuffled batches; sized so training loops know the step count.

    ``augment(x_batch, generator)``, when given, transforms each input batch with the same seeded
    generator that shuffled (so a pass is reproducible from ``seed`` alone).

    Example:
        >>> b = ShuffledBatches(torch.arange(5.0), torch.arange(5), batch=2, seed=0)
        >>> len(b), [len(y) for _, y in b]
        (3, [2, 2, 1])
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch: int,
        seed: int,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        self.x, self.y, self.batch, self.seed, self.augment = x, y, batch, seed, augment

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch  # ceil: the last batch may be short

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.y), generator=gen)
        for start in range(0, len(order), self.batch):
            ids = order[start : start + self.batch]
            x = self.x[ids]
            yield (self.augment(x, gen) if self.augment is not None else x), self.y[ids]


def save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` as safetensors through :func:`torchslim.io.atomic.atomic_file`: never half a file."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))


def cached_or_trained(
    path: Path, build: Callable[[], nn.Module], train: Callable[[], nn.Module], what: str, threads: int | None = None
) -> dict[str, torch.Tensor]:
    """The state dict cached at ``path`` if it loads into ``build()`` and is finite, else ``train()``'s (then cached).

    A corrupt, stale or non-finite cache is logged and rebuilt, never trusted. With ``threads``, ``train()``
    runs on that many intra-op threads and the caller's setting is restored after it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.exists():
        try:
            state = load_file(path)
            if all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
                build().load_state_dict(state, strict=True)  # checks names and shapes
                return state
            log.warning("cached %s %s has non-finite weights; retraining", what, path)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:  # corrupt/stale: rebuild
            log.warning("cannot load cached %s %s (%s); retraining", what, path, exc)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = train()
    finally:
        torch.set_num_threads(before)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_atomic(state, path)
    return state


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
        has_quality: whether ``metric`` measures the model's output quality; a speed-only workload
            (``llama-decode``: tokens per second of random weights) sets False, and ``torchslim tune`` /
            ``sensitivity`` refuse it. A workload with an empty ``metric`` has no quality either.
        selection_split: the split ``evaluate`` accepts for choices (tuning, sensitivity, early
            stopping), kept apart from the reported ``"test"`` split where the data allows (``"val"``).
    """

    name: str = ""
    metric: str = ""
    higher_is_better: bool = True
    has_quality: bool = True
    selection_split: str = "val"

    def quality_problem(self) -> str | None:
        """Why this workload cannot guide a quality-aware search, or None when it can.

        Example:
            >>> from torchslim.workloads import get_workload
            >>> get_workload("digits").quality_problem() is None
            True
        """
        if not self.metric:
            return f"workload {self.name!r} declares no quality metric (Workload.metric is empty)"
        if not self.has_quality:
            return f"workload {self.name!r} measures speed only ({self.metric}), not the quality of its outputs"
        return None

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

    def example_scores(self, model: nn.Module, split: str = "test") -> torch.Tensor | None:
        """Per-example scores on ``split`` whose mean is ``evaluate``'s ``metric`` (e.g. 0/1 correctness), or
        None when the metric is not a mean over examples (default). ``torchslim tune`` uses them for the
        standard error of a quality drop (:mod:`torchslim.tuning.budget`)."""
        return None

    def calibration(self, n_batches: int = 8) -> list[Any]:
        """Calibration batches (each a tuple of positional inputs); default: none."""
        return []

    def train_data(self) -> Callable[[], Iterable[Any]] | None:
        """A callable giving a fresh iterable of ``(inputs, target)`` batches, or None."""
        return None

    def tune_space_overrides(self) -> dict[str, Any]:
        """Keyword arguments ``torchslim tune`` passes to ``SearchSpace.for_model`` for this workload.

        The default space searches every technique that applies to the model, training included; a
        workload whose trials would take too long overrides dimensions here (``{}``: the default space).
        """
        return {}

    def context(self, seed: int = 0) -> Context:
        """A Context wired with this workload's inputs, data and test-split evaluation."""
        return Context(
            example_inputs=self.example_inputs(),
            calibration=self.calibration(),
            train_data=self.train_data(),
            eval_fn=lambda m: self.evaluate(m, "test"),
            seed=seed,
        )
