"""``Context``: what a transform may need besides the model (inputs, data, teacher, evaluation).

Example:
    >>> import torch
    >>> ctx = Context(example_inputs=(torch.zeros(1, 3),))
    >>> ctx.device
    'cpu'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class Context:
    """Inputs a transform or measurement may use; every field is optional.

    Args:
        example_inputs: a tuple of positional inputs used for tracing, MACs and latency.
        calibration: batches for calibration (each a tensor or a tuple of positional inputs).
        train_data: a callable returning an iterable of ``(inputs, target)`` batches (fine-tuning,
            distillation); a callable so every epoch gets a fresh, seeded pass.
        teacher: a frozen teacher model for distillation.
        eval_fn: ``model -> {metric: value}``; the first metric is the quality figure.
        device: where work runs (``"cpu"`` or ``"cuda"``).
        seed: seed for every random choice a transform makes.
        events: notes transforms record (skipped modules, fallbacks); run_recipe puts them in the report.
    """

    example_inputs: tuple[Any, ...] | None = None
    calibration: Sequence[Any] | None = None
    train_data: Callable[[], Iterable[Any]] | None = None
    teacher: nn.Module | None = None
    eval_fn: EvalFn | None = None
    device: str = "cpu"
    seed: int = 0
    events: list[str] = field(default_factory=list)

    def record(self, message: str) -> None:
        """Note something the user should see in the report (a skip, a fallback)."""
        self.events.append(message)
