"""``tune(..., model=m)`` takes ``m`` as its baseline and never calls the workload's ``model()``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from torchslim.measure import artifact_bytes
from torchslim.tuning import TuneOptions, tune
from torchslim.tuning.space import SearchSpace
from torchslim.workloads import Workload


class NoModel(Workload):
    """Labels are the given model's own predictions; ``model()`` refuses, ``evaluate`` records what it scores."""

    name, metric = "no-model", "accuracy"

    def __init__(self, reference: nn.Module) -> None:
        self.x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.y = reference(self.x).argmax(-1)
        self.evaluated: list[nn.Module] = []

    def model(self) -> nn.Module:
        raise AssertionError("tune called workload.model() although it was given the baseline")

    def factory(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def example_inputs(self):
        return (self.x[:4],)

    def calibration(self, n_batches: int = 8):
        return [(self.x,)]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        self.evaluated.append(model)
        return {"accuracy": (model(self.x).argmax(-1) == self.y).float().mean().item()}


def test_tune_takes_the_given_model_as_its_baseline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    given = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).train()
    wl = NoModel(given)
    space = SearchSpace(prune_methods=("none",), recovery=("none",), quant=("none", "bf16"))
    options = TuneOptions(
        max_drop=0.05, trials=1, out=tmp_path / "t", space=space, latency_runs=2, builtins=(), confirm=0, progress=False
    )
    result = tune(wl, options, model=given)
    assert result.completed == 1
    assert not given.training  # put in eval mode: the very object, not a copy
    assert wl.evaluated[0] is given and wl.evaluated[1] is given  # the budget's baseline (val), then test
    assert result.baseline["quality"] == 1.0 and result.baseline["size_bytes"] == artifact_bytes(given)
