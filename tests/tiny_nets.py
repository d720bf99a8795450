"""Tiny plain-torch models shared by test folders (importable from every one, see ``conftest.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn


class ResidualBlock(nn.Module):
    """``x + down(relu(up(x)))`` with ``up`` 16 -> 48 and ``down`` 48 -> 16: a block layer dropping,
    channel pruning and low-rank factorization can each change."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 48), nn.Linear(48, 16)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def small_cnn() -> nn.Module:
    """A 3-channel 3×3 stem, a strided 3×3 conv of 16 input channels, a 1×1 head conv (seeded, eval mode):
    one layer of each kind the static int8 kernels route (few channels, im2col rows, the 1×1 loop)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 8, 1),
    ).eval()  # fmt: skip
