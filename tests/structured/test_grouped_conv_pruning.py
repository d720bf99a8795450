"""Channel pruning of user CNNs with grouped and depthwise convolutions (residual blocks with BatchNorm).

Before the fix the pruned copy was fine but replaying its plan took a grouped conv pruned down to
``out_channels == groups`` for a depthwise one (load_state_dict size mismatch), mixed group counts in one
coupled group left widths no conv could take, and depth-multiplier convs raised IndexError.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.io import load, save
from torchslim.structured import ChannelPruning

X = torch.randn(4, 3, 16, 16)


class Block(nn.Module):
    """``x + BN(dwconv(ReLU(BN(conv_g(x)))))``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(24, 24, 3, padding=1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.bn2 = nn.BatchNorm2d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.dw(torch.relu(self.bn1(self.conv1(x)))))


class ResNetish(nn.Module):
    def __init__(self, groups: tuple[int, ...] = (4, 2)) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(g) for g in groups])
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Multiplier(nn.Module):
    """A grouped conv, then a depth-multiplier conv (groups == in_channels != out_channels)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 24, 3, padding=1)
        self.b = nn.Conv2d(24, 24, 3, padding=1, groups=3)
        self.c = nn.Conv2d(24, 48, 3, padding=1, groups=24)
        self.fc = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))).mean((2, 3)))


def convs(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    return {n: (m.in_channels, m.out_channels, m.groups) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune(model: nn.Module, **cfg) -> nn.Module:
    model.eval()
    ts.compress_(model, ChannelPruning(importance="l2", **cfg), ctx=ts.Context(example_inputs=(X,)))
    return model


def assert_valid_and_replayable(model: nn.Module, build) -> None:
    for name, (cin, cout, groups) in convs(model).items():
        assert cout > 0 and cin % groups == 0 and cout % groups == 0, (name, cin, cout, groups)
    assert model(X).shape == (4, 5)
    fresh = replay_ops(build().eval(), structure_ops(model))
    assert convs(fresh) == convs(model)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())  # bit for bit


@pytest.mark.parametrize("ratio, width", [(0.8125, 4), (0.5, 12)])
def test_grouped_and_depthwise_residual_blocks_prune_and_replay(ratio: float, width: int) -> None:
    m = prune(ResNetish(), ratio=ratio)
    assert_valid_and_replayable(m, ResNetish)
    assert convs(m)["blocks.0.conv1"] == (width, width, 4)
    assert convs(m)["blocks.0.dw"] == (width, width, width)  # still depthwise


def test_pruned_grouped_model_saves_and_loads(tmp_path) -> None:
    m = prune(ResNetish(), ratio=0.8125)
    save(m, tmp_path / "art")
    again = load(tmp_path / "art", factory=ResNetish).eval()
    assert convs(again) == convs(m)
    assert torch.allclose(again(X), m(X))


def test_mixed_group_counts_keep_a_multiple_of_each() -> None:
    m = prune(ResNetish((4, 3)), ratio=0.5)
    assert_valid_and_replayable(m, lambda: ResNetish((4, 3)))
    assert convs(m)["blocks.1.conv1"] == (12, 12, 3)  # a multiple of 4 and of 3


def test_depth_multiplier_conv_is_left_whole_and_the_rest_pruned() -> None:
    m = prune(Multiplier(), ratio=0.5)
    assert_valid_and_replayable(m, Multiplier)
    assert convs(m)["c"] == (24, 48, 24)
    assert convs(m)["a"][1] < 24
