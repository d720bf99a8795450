"""A model changed by every structural technique saves as safetensors + JSON and reloads into its own class."""

from __future__ import annotations

import torch
import torch.nn as nn
from tiny_nets import ResidualBlock

import torchslim as ts
from torchslim.io import load, save
from torchslim.structured import ChannelPruning, LayerDropping, LowRank, PruningPlan


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ResidualBlock() for _ in range(4)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def build() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def test_all_structural_ops_reload_from_the_artifact(tmp_path) -> None:
    x = torch.randn(5, 16)
    m = build()
    ctx = ts.Context(example_inputs=(x,))
    ts.compress_(m, LayerDropping(every_k=2), ctx=ctx)
    ts.compress_(m, ChannelPruning(ratio=0.5), ctx=ctx)
    ts.compress_(m, LowRank(rank_ratio=0.25), select=ts.Select(include=(r"\.up$",)), ctx=ctx)
    assert len(m.blocks) == 2 and m.blocks[0].up.rank == 4 and m.blocks[0].down.in_features == 24
    assert PruningPlan.of(m)[0].removed() == 2 * (24 + 24)  # out of up, in of down, in two blocks
    save(m, tmp_path / "art")
    again = load(tmp_path / "art", factory=build)
    assert torch.equal(again(x), m(x))
