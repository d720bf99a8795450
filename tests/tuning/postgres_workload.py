"""A tiny workload for the PostgreSQL tuning test, imported by its worker processes (``--workload
postgres_workload:SlowTiny`` with this folder on ``PYTHONPATH``).

Its model sleeps a little in each forward pass, so every trial stays running long enough for the test to
kill the worker that runs it; the labels are the model's own predictions (baseline accuracy 1.0).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from torchslim.workloads import Workload

# Seconds each forward pass sleeps: a trial runs several (latency runs, evaluation), well over the
# test's polling interval.
FORWARD_SLEEP_S = 0.05


class SlowNet(nn.Module):
    """Two linear layers and a sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(FORWARD_SLEEP_S)
        return self.fc2(torch.relu(self.fc1(x)))


def _build() -> nn.Module:
    torch.manual_seed(0)
    return SlowNet()


class SlowTiny(Workload):
    """Post-training search only (no training data): pruning and quantization choices of two layers."""

    name = "pg-slow-tiny"
    metric = "accuracy"

    def __init__(self) -> None:
        self.x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.y = self.model()(self.x).argmax(-1)

    def model(self) -> nn.Module:
        return _build().eval()

    def factory(self) -> nn.Module:
        return _build()

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (self.x[:4],)

    def tune_space_overrides(self) -> dict:
        return {"prune_methods": ("none", "magnitude"), "sparsity": (0.1, 0.9, 0.1), "quant": ("none", "bf16", "int8")}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        model.eval()
        return {"accuracy": (model(self.x).argmax(-1) == self.y).float().mean().item()}
