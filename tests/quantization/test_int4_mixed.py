"""MixedPrecision: budget respected, sensitive layers upgraded, choice recorded, save/load round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.config import config_from_dict
from torchslim.core.context import Context
from torchslim.errors import ConfigError
from torchslim.quantization import Int4WeightOnlyLinear, MixedPrecision
from torchslim.quantization.common.sqnr import sqnr
from torchslim.quantization.int4.mixed import choose_precisions, layer_bytes, precision_plan
from torchslim.quantization.int8.modules import Int8WeightOnlyLinear


def net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    with torch.no_grad():
        m[2].weight[:, :4] *= 40  # a few outlier weights: int4 hurts this layer most
    return m


def calib() -> list[torch.Tensor]:
    return [torch.randn(32, 128, generator=torch.Generator().manual_seed(s)) for s in range(2)]


def fp32_bytes(m: nn.Module) -> int:
    return sum(4 * lin.weight.numel() for lin in m if isinstance(lin, nn.Linear))


def test_choice_respects_budget_and_upgrades_the_sensitive_layer():
    m = net()
    budget = int(0.2 * fp32_bytes(m))
    ctx = Context(calibration=calib())
    ts.compress_(m, MixedPrecision(budget_ratio=0.2, group_size=32), ctx=ctx)
    plan = precision_plan(m)
    assert set(plan) == {"0", "2", "4"}
    assert sum(v["bytes"] for v in plan.values()) <= budget
    assert plan["2"]["choice"] == "int8" and plan["0"]["choice"] == "int4"
    assert isinstance(m[2], Int8WeightOnlyLinear) and isinstance(m[0], Int4WeightOnlyLinear)
    assert plan["2"]["options"]["int4"]["sqnr_db"] < plan["0"]["options"]["int4"]["sqnr_db"]
    assert any("2 -> int8" in e for e in ctx.events) and any("budget bytes" in e for e in ctx.events)


def test_generous_budget_keeps_bf16_and_round_trips(tmp_path):
    m = net()
    x = torch.randn(8, 128, generator=torch.Generator().manual_seed(9))
    ref = m(x)
    ts.compress_(m, MixedPrecision(budget_ratio=0.5, group_size=32), ctx=Context(calibration=calib()))
    choices = [v["choice"] for v in precision_plan(m).values()]
    assert "bf16" in choices
    y = m(x)
    assert sqnr(ref, y) >= 25
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=net)
    assert torch.equal(back(x), y)


def test_budget_below_smallest_choice_is_a_config_error():
    m = net()
    with pytest.raises(ConfigError, match="budget"):
        ts.compress_(m, MixedPrecision(budget_bytes=1000, group_size=32), ctx=Context(calibration=calib()))
    assert type(m[0]) is nn.Linear


def test_config_validation():
    with pytest.raises(ConfigError, match="exactly one"):
        MixedPrecision()
    with pytest.raises(ConfigError, match="choices"):
        MixedPrecision(budget_ratio=0.3, choices=("int3",))
    cfg = MixedPrecision(budget_ratio=0.3, choices=("int4", "int8"))
    assert config_from_dict(cfg.to_dict()) == cfg


def test_greedy_choice_and_bytes():
    assert layer_bytes("int4", 256, 1024, 128) <= 0.15 * layer_bytes("fp32", 256, 1024)
    opts = {"a": {"int4": (10, 30.0), "bf16": (40, 60.0)}, "b": {"int4": (10, 10.0), "bf16": (40, 60.0)}}
    assert choose_precisions(opts, 50) == {"a": "int4", "b": "bf16"}
    assert choose_precisions(opts, 20) == {"a": "int4", "b": "int4"}
