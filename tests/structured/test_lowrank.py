from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.config import config_from_dict
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError
from torchslim.structured.lowrank import LowRank, LowRankLinear, factorize


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 1))


@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (8, 8)])
def test_full_rank_reproduces_the_layer(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    x = torch.randn(5, shape[0])
    full = factorize(lin, min(shape))
    assert torch.allclose(full(x), lin(x), atol=1e-5)


def test_rank_ratio_factorization_is_smaller_and_close_on_low_rank_weights() -> None:
    m = model()
    with torch.no_grad():  # make layer 0 exactly rank 8 so a rank-8 factorization is exact
        m[0].weight.copy_(torch.randn(64, 8) @ torch.randn(8, 32) / 8)
    x = torch.randn(4, 32)
    ref0 = m[0](x)
    w2 = m[2].weight.detach().clone()
    before = sum(p.numel() for p in m.parameters())
    ctx = ts.Context()
    ts.compress_(m, LowRank(rank_ratio=0.25), ctx=ctx)
    assert isinstance(m[0], LowRankLinear) and m[0].rank == 8 and isinstance(m[2], LowRankLinear)
    assert type(m[4]) is nn.Linear  # 32x1: a rank-1 split would not be smaller
    assert sum(p.numel() for p in m.parameters()) < before
    assert torch.allclose(m[0](x), ref0, atol=1e-5)  # layer 0 has rank 8: exact
    # Eckart-Young: the error of the rank-r factorization is exactly the dropped singular values' energy
    s2 = torch.linalg.svdvals(w2.double())
    err = (m[2].up.weight @ m[2].down.weight - w2).double().norm() ** 2
    assert torch.isclose(err, s2[m[2].rank :].pow(2).sum(), rtol=1e-4)
    assert "factored 2" in ctx.events[-1]
    fresh = replay_ops(model(), structure_ops(m))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), m(x))


def test_energy_picks_the_rank_holding_the_spectrum() -> None:
    lin = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([10.0, 5.0] + [0.01] * 14)))
    m = nn.Sequential(lin)
    ts.compress_(m, LowRank(energy=0.99))
    assert m[0].rank == 2
    x = torch.randn(3, 16)
    assert torch.allclose(m[0](x), x @ torch.diag(torch.tensor([10.0, 5.0] + [0.0] * 14)), atol=0.05)


def test_config() -> None:
    assert LowRank().rank_ratio == 0.5
    assert config_from_dict(LowRank(energy=0.9).to_dict()) == LowRank(energy=0.9)
    with pytest.raises(ConfigError):
        LowRank(rank_ratio=0.5, energy=0.9)
    with pytest.raises(ConfigError):
        LowRank(rank_ratio=2.0)
