"""The two sides of a distillation objective: tapped student features (with learned projections) and
the frozen teacher's, combined as ``Σ weight_i · loss_i``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.distillation.config import LossTerm
    >>> from torchslim.distillation.losses import get_loss
    >>> from torchslim.distillation.taps import FeatureTaps
    >>> student, terms = nn.Linear(2, 3), [(0, LossTerm("mse", 1.0), get_loss("mse"))]
    >>> with FeatureTaps(student, []) as taps:
    ...     feats = StudentOutputs(student, terms, taps)(torch.zeros(4, 2))
    >>> loss, values = objective(terms, feats, {0: feats[0].detach() + 1.0}, None, 1.0)
    >>> round(float(loss.detach()), 4)  # (y + 1 - y)² rounds in float32 for some random biases
    1.0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from torchslim.distillation.config import LossTerm
from torchslim.distillation.data import call_model
from torchslim.distillation.losses import LossSpec
from torchslim.distillation.taps import FeatureTaps, select_output, split_tap_path
from torchslim.errors import ConfigError

__all__ = ["ActiveTerm", "Projection", "StudentOutputs", "add_projections", "objective", "teacher_outputs"]

# (index in the config's terms, the term, its registered loss)
ActiveTerm = tuple[int, LossTerm, LossSpec]


class Projection(nn.Module):
    """A learned map from the student's width to the teacher's (FitNets' regressor, TinyBERT's ``W_h``).

    Channels are dim 1 of a ``[B, C, H, W]`` feature map (a 1x1 convolution), the last dim otherwise.

    Example:
        >>> import torch
        >>> Projection(4, 8, conv=True)(torch.zeros(2, 4, 3, 3)).shape
        torch.Size([2, 8, 3, 3])
    """

    def __init__(self, student_width: int, teacher_width: int, conv: bool) -> None:
        super().__init__()
        self.proj = (
            nn.Conv2d(student_width, teacher_width, 1, bias=False)
            if conv
            else nn.Linear(student_width, teacher_width, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _width(x: torch.Tensor) -> tuple[int, bool]:
    conv = x.dim() == 4
    return int(x.shape[1] if conv else x.shape[-1]), conv


def _tapped(out: Any, taps: FeatureTaps, path: str) -> torch.Tensor:
    module, index = split_tap_path(path)
    return taps[path] if module else select_output(out, index)


class StudentOutputs(nn.Module):
    """Student + projections as one module (what DDP wraps): the student side of every active term."""

    def __init__(self, student: nn.Module, terms: list[ActiveTerm], taps: FeatureTaps) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict()
        self.terms = terms
        self.taps = taps

    def forward(self, inputs: Any) -> dict[int, torch.Tensor]:
        """``{term index: student feature}``, projected to the teacher's width where needed."""
        self.taps.clear()
        out = call_model(self.student, inputs)
        feats: dict[int, torch.Tensor] = {}
        for i, term, _ in self.terms:
            f = _tapped(out, self.taps, term.student)
            feats[i] = self.projections[str(i)](f) if str(i) in self.projections else f
        return feats


def teacher_outputs(
    teacher: nn.Module, taps: FeatureTaps, inputs: Any, terms: list[ActiveTerm]
) -> dict[int, torch.Tensor]:
    """``{term index: teacher feature}`` for every term compared with the teacher (run under no_grad)."""
    taps.clear()
    out = call_model(teacher, inputs)
    return {i: _tapped(out, taps, term.teacher) for i, term, spec in terms if spec.reference == "teacher"}


def add_projections(
    outputs: StudentOutputs, s_feats: dict[int, torch.Tensor], t_feats: dict[int, torch.Tensor]
) -> None:
    """Create a projection for every projectable term whose student and teacher widths differ.

    Raises:
        ConfigError: the widths differ and the loss has no projection (e.g. ``kd``, ``attention``).
    """
    ref = next(outputs.student.parameters())
    for i, term, spec in outputs.terms:
        if spec.reference != "teacher":
            continue
        (ws, conv), (wt, _) = _width(s_feats[i]), _width(t_feats[i])
        if ws == wt:
            continue
        if not spec.projectable:
            raise ConfigError(
                f"loss {term.loss!r} compares {term.student or 'the output'!r} (width {ws}) with "
                f"{term.teacher or 'the output'!r} (width {wt}); it has no projection: tap layers of equal "
                "width or use mse, cosine, hidden or embedding"
            )
        outputs.projections[str(i)] = Projection(ws, wt, conv).to(device=ref.device, dtype=ref.dtype)


def objective(
    terms: list[ActiveTerm],
    s_feats: dict[int, torch.Tensor],
    t_feats: dict[int, torch.Tensor],
    target: Any,
    temperature: float,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``Σ weight_i · loss_i`` and the weighted value of each term (the losses upcast bf16 features).

    Raises:
        ConfigError: a label loss (``ce``) on a batch without labels.
    """
    values = {}
    for i, term, spec in terms:
        if spec.reference == "target":
            if target is None:
                raise ConfigError(f"loss {term.loss!r} needs labels; the batches carry none")
            reference = target
        else:
            reference = t_feats[i]
        values[i] = term.weight * spec(s_feats[i], reference, temperature)
    return torch.stack(list(values.values())).sum(), values
