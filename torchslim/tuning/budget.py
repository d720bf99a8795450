"""The quality budget of ``torchslim tune``: a drop measured on the validation split, with a margin for its noise.

A validation split is a sample. On the digits workload (360 validation images) one accuracy point is
3.6 images, and the standard error of the drop between two models is about ``sqrt(disagreements) / n``:
near a point when a small student disagrees with the teacher on a dozen images. A search that takes the
smallest of many trials whose *measured* drop is within a 1-point budget picks those the validation
images happen to favour; measured on the digits test split, such a pick lost 2.8 points (a search with
a 1-point budget, 40 trials; `torchslim bench digits-tune` before this module).

So a trial is within budget when the *upper bound* ``drop + margin * se`` is, where ``se`` is the
standard error of the paired per-example difference (the same examples scored by the baseline and the
candidate; :func:`paired_drop`). It needs per-example scores whose mean is the metric
(``Workload.example_scores``: 0/1 correctness for accuracy); a workload without them (a Spearman
correlation is not a mean over examples) is judged on the measured drop alone, and the report says so.

Example:
    >>> import torch
    >>> base = torch.tensor([1.0, 1, 1, 1, 0, 1, 1, 1])
    >>> cand = torch.tensor([1.0, 0, 1, 1, 1, 1, 0, 1])
    >>> drop, se = paired_drop(base, cand, higher_is_better=True)
    >>> round(drop, 3), round(se, 3)
    (0.125, 0.227)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Budget", "Judgement", "paired_drop"]


def paired_drop(base: torch.Tensor, cand: torch.Tensor, *, higher_is_better: bool) -> tuple[float, float]:
    """Mean drop of ``cand`` from ``base`` over the same examples and its standard error.

    ``drop = mean(base - cand)`` (sign flipped when lower is better); ``se = std(base - cand) / sqrt(n)``
    with Bessel's correction (0 for a single example).

    Raises:
        ValueError: different lengths, or no examples.
    """
    if base.shape != cand.shape or base.numel() == 0:
        raise ValueError(f"per-example scores must be non-empty and of one shape, got {tuple(base.shape)} and {tuple(cand.shape)}")  # fmt: skip
    d = base.double().flatten() - cand.double().flatten()
    if not higher_is_better:
        d = -d
    n = d.numel()
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return float(d.mean()), se


@dataclass(frozen=True)
class Judgement:
    """One model against the budget: ``quality`` (the metric), ``drop``, its standard error ``drop_se``
    (None without per-example scores), ``bound = drop + margin * drop_se`` and ``feasible = bound <= max_drop``."""

    quality: float
    drop: float
    drop_se: float | None
    bound: float
    feasible: bool

    def attrs(self) -> dict[str, Any]:
        """The judgement as JSON-ready trial attributes."""
        return {
            "quality": self.quality,
            "drop": self.drop,
            "drop_se": self.drop_se,
            "drop_bound": self.bound,
            "feasible": self.feasible,
        }


class Budget:
    """Judges models against ``baseline`` on ``split`` (see the module docstring).

    Args:
        wl: the workload (``evaluate``, ``metric``, ``higher_is_better``; ``example_scores`` when it has them).
        baseline: the uncompressed model.
        max_drop: the largest allowed drop, in the metric's units.
        margin: standard errors added to the measured drop (0: the measured drop alone).
        split: the split the search sees (default: the workload's ``selection_split``, ``"val"``).
    """

    def __init__(self, wl: Any, baseline: torch.nn.Module, *, max_drop: float, margin: float, split: str | None = None):
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        split = split if split is not None else getattr(wl, "selection_split", "val")
        self.wl, self.max_drop, self.margin, self.split = wl, float(max_drop), float(margin), split
        self._base_scores = self._scores(baseline) if margin > 0 else None
        self.base_quality = self._quality(baseline, self._base_scores)

    @property
    def has_margin(self) -> bool:
        """Whether the margin applies (a margin > 0 and per-example scores from the workload)."""
        return self._base_scores is not None

    def _scores(self, model: torch.nn.Module) -> torch.Tensor | None:
        fn = getattr(self.wl, "example_scores", None)
        return fn(model, self.split) if fn is not None else None

    def _quality(self, model: torch.nn.Module, scores: torch.Tensor | None) -> float:
        # Per-example scores average to the metric (Workload.example_scores): no second pass over the split.
        if scores is not None:
            return float(scores.double().mean())
        return float(self.wl.evaluate(model, self.split)[self.wl.metric])

    def drop(self, quality: float) -> float:
        """The measured drop of a metric value from the baseline's."""
        return self.base_quality - quality if self.wl.higher_is_better else quality - self.base_quality

    def judge(self, model: torch.nn.Module) -> Judgement:
        """Evaluate ``model`` on the split and judge it against the budget."""
        scores = self._scores(model) if self._base_scores is not None else None
        quality = self._quality(model, scores)
        drop, se = self.drop(quality), None
        if scores is not None:
            _, se = paired_drop(self._base_scores, scores, higher_is_better=self.wl.higher_is_better)
        bound = drop + self.margin * (se or 0.0)
        return Judgement(quality, drop, se, bound, bool(bound <= self.max_drop + 1e-12))

    def describe(self) -> str:
        """One line for reports: how the budget is judged."""
        if self.has_margin:
            return f"drop + {self.margin:g} standard error(s) of the paired per-example difference <= {self.max_drop:g}"
        why = "margin 0" if self.margin == 0 else f"{self.wl.name} has no per-example scores"
        return f"measured drop <= {self.max_drop:g} ({why})"
