"""A tiny user workload for the kill harness: a conv net on random 8x8 images, a student with dropout.

Imported by the CLI children as ``crashmod:Tiny`` (the harness puts this folder on ``PYTHONPATH``).
The training data are shuffled by a seeded generator and the student has dropout, so an exact resume
must restore the data order and the RNG state.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.workloads import Workload


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 16), nn.ReLU(), nn.Linear(16, 3))


def student() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def example_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)),)


class Tiny(Workload):
    """Quality is agreement with the untouched model's predictions on random inputs."""

    name, metric = "", "agreement"

    def __init__(self, data: str | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = {s: torch.randn(64, 1, 8, 8, generator=gen) for s in ("train", "val", "test")}

    def factory(self) -> nn.Module:
        return build()

    def model(self) -> nn.Module:
        return build().eval()

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (self.x["test"][:4],)

    def calibration(self, n_batches: int = 8) -> list[torch.Tensor]:
        return [self.x["train"][i : i + 16] for i in range(0, 64, 16)][:n_batches]

    @torch.no_grad()
    def train_data(self) -> DataLoader:
        x = self.x["train"]
        data = TensorDataset(x, build().eval()(x).argmax(1))
        return DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        ref = build().eval()(self.x[split]).argmax(1)
        return {"agreement": (model.eval()(self.x[split]).argmax(1) == ref).float().mean().item()}
