"""The tuning budget: the paired drop's standard error and the margin that guards against validation luck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from torchslim.tuning.budget import Budget, paired_drop
from torchslim.workloads.digits import DigitsWorkload, build_teacher


def test_paired_drop_matches_the_textbook_formula() -> None:
    base = torch.tensor([1.0, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    cand = torch.tensor([1.0, 0, 1, 0, 1, 1, 1, 0, 1, 1])
    drop, se = paired_drop(base, cand, higher_is_better=True)
    d = [b - c for b, c in zip(base.tolist(), cand.tolist(), strict=True)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    assert drop == pytest.approx(0.2) and se == pytest.approx(math.sqrt(var / len(d)))
    drop_low, se_low = paired_drop(base, cand, higher_is_better=False)  # a loss: lower is better
    assert drop_low == pytest.approx(-0.2) and se_low == pytest.approx(se)
    assert paired_drop(base, base, higher_is_better=True) == (0.0, 0.0)


def test_paired_drop_refuses_mismatched_or_empty_scores() -> None:
    with pytest.raises(ValueError, match="one shape"):
        paired_drop(torch.ones(3), torch.ones(4), higher_is_better=True)
    with pytest.raises(ValueError, match="non-empty"):
        paired_drop(torch.ones(0), torch.ones(0), higher_is_better=True)


class _Scored:
    """A workload stand-in whose 'models' are fixed per-example correctness vectors."""

    name, metric, higher_is_better = "scored", "accuracy", True

    def evaluate(self, model: nn.Module, split: str = "val") -> dict:
        return {"accuracy": float(model.hits.double().mean())}

    def example_scores(self, model: nn.Module, split: str = "val") -> torch.Tensor:
        return model.hits


def _model(hits: list[int]) -> nn.Module:
    m = nn.Module()
    m.register_buffer("hits", torch.tensor(hits, dtype=torch.float32))
    return m


def test_margin_rejects_a_drop_within_budget_that_rests_on_many_disagreements() -> None:
    base = _model([1] * 200)
    # 4 of 200 wrong: drop 0.02 exactly at the budget; its standard error pushes the bound over it.
    cand = _model([0] * 4 + [1] * 196)
    strict = Budget(_Scored(), base, max_drop=0.02, margin=1.0).judge(cand)
    se = math.sqrt((4 * 0.98**2 + 196 * 0.02**2) / 199 / 200)  # sample std of the differences / sqrt(n)
    assert strict.drop == pytest.approx(0.02) and strict.drop_se == pytest.approx(se)
    assert strict.bound == pytest.approx(strict.drop + strict.drop_se) and not strict.feasible
    plain = Budget(_Scored(), base, max_drop=0.02, margin=0.0).judge(cand)
    assert plain.feasible and plain.drop_se is None and plain.bound == pytest.approx(0.02)
    same = Budget(_Scored(), base, max_drop=0.0, margin=3.0).judge(_model([1] * 200))
    assert same.feasible and same.drop_se == 0.0
    assert "standard error" in Budget(_Scored(), base, max_drop=0.02, margin=1.0).describe()


def test_budget_without_per_example_scores_judges_the_measured_drop() -> None:
    class _NoScores(_Scored):
        example_scores = None

    budget = Budget(_NoScores(), _model([1] * 10), max_drop=0.1, margin=1.0)
    j = budget.judge(_model([0] + [1] * 9))
    assert j.drop_se is None and j.feasible and not budget.has_margin
    assert "no per-example scores" in budget.describe()
    with pytest.raises(ValueError, match="margin"):
        Budget(_NoScores(), _model([1]), max_drop=0.1, margin=-1.0)


def test_digits_example_scores_average_to_its_accuracy() -> None:
    wl, model = DigitsWorkload(), build_teacher()  # untrained: a spread of right and wrong
    for split in ("val", "test"):
        scores = wl.example_scores(model, split)
        assert set(scores.unique().tolist()) <= {0.0, 1.0}
        assert float(scores.double().mean()) == wl.evaluate(model, split)["accuracy"]
