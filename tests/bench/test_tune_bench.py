"""The ``*-tune`` benchmarks: registered, and their shared comparison (tiny models, no search)."""

from __future__ import annotations

from importlib import import_module

import torch
import torch.nn as nn

from torchslim.bench import BENCHMARKS
from torchslim.bench.tune_common import compare_tuned, verdict
from torchslim.recipes import recipe_from_dict


def test_tune_benchmarks_are_registered() -> None:
    for name in ("digits-tune", "minilm-tune"):
        module, _, fn = BENCHMARKS[name].partition(":")
        assert callable(getattr(import_module(module), fn))


class _Toy:
    """A workload stand-in: the metric is minus the mean output, so bf16 and fp32 score about the same."""

    metric, higher_is_better = "score", True

    def example_inputs(self) -> tuple:
        return (torch.ones(4, 64),)

    def context(self):  # noqa: ANN201
        from torchslim.core import Context

        return Context(example_inputs=self.example_inputs())

    def evaluate(self, model: nn.Module, split: str = "test") -> dict:
        with torch.no_grad():
            return {"score": -float(model(*self.example_inputs()).float().abs().mean())}


def test_compare_tuned_rows_carry_the_validation_budget() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64)).eval()
    recipes = {
        "bf16": recipe_from_dict({"name": "b", "steps": [{"kind": "cast-dtype", "dtype": "bfloat16"}]}),
        "tuned": recipe_from_dict({"name": "t", "steps": [{"kind": "int8-weight-only"}]}),
    }
    res = compare_tuned("toy-tune", _Toy(), base, recipes, max_drop=0.5, margin=1.0, rounds=2, warmup=1)
    rows = {r["variant"]: r for r in res.rows}
    assert list(rows) == ["fp32", "torchslim-bf16", "torchslim-tuned"]
    assert all(r["within_budget"] for r in rows.values()) and rows["fp32"]["val_drop"] == 0.0
    assert rows["torchslim-tuned"]["size_mb"] < rows["torchslim-bf16"]["size_mb"]
    assert verdict(res).startswith("tuned within budget: True; smaller than every built-in within budget (1): True")
