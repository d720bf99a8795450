"""``Context``: what a transform may need besides the model (inputs, data, teacher, evaluation).

Data is taken as users hold it (see :mod:`torchslim.core.batches` for how a batch becomes a model
call and :mod:`torchslim.core.sources` for how calibration and training data are read).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(torch.zeros(8, 3), torch.zeros(8).long()), batch_size=4)
    >>> ctx = Context(example_inputs=(torch.zeros(1, 3),), calibration=loader, train_data=loader)
    >>> len(ctx.calibration), sum(1 for _ in ctx.train_data()), ctx.device
    (2, 2, 'cpu')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.batches import InputFn
from torchslim.core.device import check_device
from torchslim.core.sources import calibration_list, epoch_source

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class Context:
    """Inputs a transform or measurement may use; every field is optional.

    Args:
        example_inputs: inputs for tracing, MACs and latency: a tuple of positional inputs, a dict of
            keyword inputs (a tokenizer's output), or one tensor (made a 1-tuple).
        calibration: calibration batches: a list, a ``DataLoader`` or any iterable (a generator too),
            read once into a list at construction so every pass sees the same batches. Each batch is a
            tensor, a tuple/list of positional inputs, ``(inputs, target)``, or a dict /
            ``BatchEncoding`` of keyword inputs; targets are left out of the model call.
        train_data: training batches (fine-tuning, distillation), ``(inputs, target)`` or a dict with
            ``labels``: a callable returning a fresh iterable per epoch, or a ``DataLoader`` / list,
            iterated anew every epoch (kept here as such a callable).
        teacher: a frozen teacher model for distillation.
        eval_fn: ``model -> {metric: value}``; the first metric is the quality figure.
        device: where work runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``); checked at construction.
        seed: seed for every random choice a transform makes.
        events: notes transforms record (skipped modules, fallbacks); run_recipe puts them in the report.
        input_fn: ``input_fn(batch) -> (args, kwargs)`` or ``(args, kwargs, target)`` for batches of any
            other layout; applied once to each calibration and training batch as it is read.
        distill_eval: the ``eval_fn`` of a distill step's training (see
            :func:`~torchslim.distillation.train_distill`): called at its evaluations (``eval_every``; by
            default the end of every epoch), its first metric drives early stopping and the best weights;
            None: no evaluation during distillation. ``run_recipe(distill_eval=...)`` sets it.

    Raises:
        ConfigError: a device that is not available, a one-shot iterator as ``train_data``, a
            ``Dataset`` of single samples instead of batches, or data of an unsupported type.
    """

    example_inputs: tuple[Any, ...] | Mapping[str, Any] | None = None
    calibration: list[Any] | None = None
    train_data: Callable[[], Iterable[Any]] | None = None
    teacher: nn.Module | None = None
    eval_fn: EvalFn | None = None
    device: str = "cpu"
    seed: int = 0
    events: list[str] = field(default_factory=list)
    input_fn: InputFn | None = None
    distill_eval: EvalFn | None = None

    def __post_init__(self) -> None:
        if isinstance(self.example_inputs, torch.Tensor):
            self.example_inputs = (self.example_inputs,)
        elif isinstance(self.example_inputs, list):
            self.example_inputs = tuple(self.example_inputs)
        self.calibration = calibration_list(self.calibration, self.input_fn)
        self.train_data = epoch_source(self.train_data, self.input_fn)
        self.device = check_device(self.device)

    def record(self, message: str) -> None:
        """Note something the user should see in the report (a skip, a fallback)."""
        self.events.append(message)
