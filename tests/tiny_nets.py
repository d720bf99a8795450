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
