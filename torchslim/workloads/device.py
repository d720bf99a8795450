"""Running a workload on another device: its models, example inputs and Context moved there.

Built-in workloads evaluate on the device of the model they are given, so moving the model is enough
for quality; :class:`OnDevice` also moves example inputs and calibration batches and sets
``Context.device`` (tensors inside tuples, lists, mappings and ``ModelInputs`` are moved with
:func:`torchslim.core.batches.to_device`).

Example:
    >>> from torchslim.workloads import get_workload
    >>> wl = OnDevice(get_workload("digits"), "cpu")
    >>> wl.name, wl.context().device
    ('digits', 'cpu')
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.batches import to_device
from torchslim.core.context import Context
from torchslim.workloads.base import Workload

__all__ = ["OnDevice"]


class OnDevice(Workload):
    """``workload`` whose models, inputs and Context live on ``device``; everything else is delegated."""

    def __init__(self, workload: Workload, device: str) -> None:
        self._inner, self.device = workload, device
        self.name, self.metric, self.higher_is_better = workload.name, workload.metric, workload.higher_is_better

    def __getattr__(self, attr: str) -> Any:  # splits(), decoder(), ... of the wrapped workload
        return getattr(self._inner, attr)

    def model(self) -> nn.Module:
        return self._inner.model().to(self.device)

    def factory(self) -> nn.Module:
        return self._inner.factory().to(self.device)

    def example_inputs(self) -> tuple[Any, ...]:
        return to_device(self._inner.example_inputs(), self.device)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        return self._inner.evaluate(model, split)

    def example_scores(self, model: nn.Module, split: str = "test") -> torch.Tensor | None:
        return self._inner.example_scores(model, split)

    def calibration(self, n_batches: int = 8) -> list[Any]:
        return to_device(list(self._inner.calibration(n_batches)), self.device)

    def train_data(self) -> Any:
        return self._inner.train_data()

    def tune_space_overrides(self) -> dict[str, Any]:
        return self._inner.tune_space_overrides()

    @property
    def has_quality(self) -> bool:  # type: ignore[override]
        return self._inner.has_quality

    @property
    def selection_split(self) -> str:  # type: ignore[override]
        return self._inner.selection_split

    def context(self, seed: int = 0) -> Context:
        ctx = self._inner.context(seed)
        return dataclasses.replace(
            ctx,
            device=self.device,
            example_inputs=to_device(ctx.example_inputs, self.device),
            calibration=to_device(ctx.calibration, self.device)
            if isinstance(ctx.calibration, (list, tuple))
            else ctx.calibration,
        )
