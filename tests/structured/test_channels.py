from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.config import config_from_dict
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError, UnsafeInputError
from torchslim.measure import count_macs
from torchslim.structured import ChannelPruning, PruningPlan


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    ).eval()  # fmt: skip


X = (torch.randn(4, 8),)
IMG = (torch.randn(4, 1, 6, 6),)


def test_parameter_count_drops_by_the_expected_amount() -> None:
    m = mlp()
    ts.compress_(m, ChannelPruning(ratio=0.5), ctx=ts.Context(example_inputs=X))
    # hidden widths 16 -> 8; the output layer keeps its 4 outputs
    assert [(lin.in_features, lin.out_features) for lin in m[::2]] == [(8, 8), (8, 8), (8, 4)]
    assert sum(p.numel() for p in m.parameters()) == (8 * 8 + 8) + (8 * 8 + 8) + (8 * 4 + 4)
    assert m(*X).shape == (4, 4)


@pytest.mark.parametrize("importance", ["l1", "l2", "random", "taylor"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_importances_and_scopes_replay_exactly(importance: str, scope: str) -> None:
    m = cnn()
    y = torch.randint(0, 3, (4,))
    ctx = ts.Context(example_inputs=IMG, train_data=lambda: [(IMG[0], y)], seed=3)
    ts.compress_(m, ChannelPruning(ratio=0.5, importance=importance, scope=scope), ctx=ctx)
    assert m[-1].out_features == 3
    assert sum(mod.out_channels for mod in m if isinstance(mod, nn.Conv2d)) == 24  # half of 16 + 32 overall
    fresh = replay_ops(cnn(), structure_ops(m))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.eval()(*IMG), m(*IMG))
    assert all(torch.equal(replay_ops(cnn(), structure_ops(m)).state_dict()[k], v) for k, v in m.state_dict().items())


def test_random_importance_is_seeded() -> None:
    plans = []
    for _ in range(2):
        m = cnn()
        ts.compress_(m, ChannelPruning(ratio=0.5, importance="random"), ctx=ts.Context(example_inputs=IMG, seed=7))
        plans.append(structure_ops(m))
    assert plans[0] == plans[1]


def test_macs_target_is_met() -> None:
    m = cnn()
    base = count_macs(m, IMG)
    ts.compress_(m, ChannelPruning(target_macs_ratio=0.5, scope="global"), ctx=ts.Context(example_inputs=IMG))
    assert 0.35 * base <= count_macs(m, IMG) <= 0.5 * base


def test_round_to_and_select_exclusion() -> None:
    m = cnn()
    ctx = ts.Context(example_inputs=IMG)
    ts.compress_(m, ChannelPruning(ratio=0.3, round_to=4), select=ts.Select(exclude=(r"^0$",)), ctx=ctx)
    assert m[0].out_channels == 16  # excluded by the Select
    assert m[3].out_channels % 4 == 0 and m[3].out_channels < 32


def test_iterative_steps_with_finetuning_between() -> None:
    m = cnn()
    y = torch.randint(0, 3, (4,))
    ctx = ts.Context(example_inputs=IMG, train_data=lambda: [(IMG[0], y)])
    ts.compress_(m, ChannelPruning(ratio=0.5, iterative_steps=2, finetune_epochs=1), ctx=ctx)
    assert m[0].out_channels == 8 and m[3].out_channels == 16
    assert len(PruningPlan.of(m)[0].groups) == 4  # two groups, pruned twice
    fresh = replay_ops(cnn(), structure_ops(m))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.eval()(*IMG), m(*IMG))


def test_frozen_parameters_stay_frozen() -> None:
    m = mlp()
    m[0].weight.requires_grad_(False)
    ts.compress_(m, ChannelPruning(ratio=0.5), ctx=ts.Context(example_inputs=X))
    assert not m[0].weight.requires_grad and m[2].weight.requires_grad


def test_config_validation_and_round_trip() -> None:
    cfg = ChannelPruning(ratio=0.25, importance="taylor", round_to=8)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="fraction"):
        ChannelPruning(ratio=50)
    with pytest.raises(ConfigError):
        config_from_dict({"kind": "channel-pruning", "importance": "l3"})
    with pytest.raises(ConfigError, match="target_macs_ratio"):
        ChannelPruning(target_macs_ratio=0.5, head_ratio=0.5)


def test_context_requirements() -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        ts.compress_(mlp(), ChannelPruning())
    with pytest.raises(ConfigError, match="taylor"):
        ts.compress_(mlp(), ChannelPruning(importance="taylor"), ctx=ts.Context(example_inputs=X))


def test_malformed_plans_are_refused() -> None:
    good = {"module": "0", "fn": "out", "dim": -1, "size": 16, "keep": [0, 1]}
    for bad in (
        {**good, "keep": [1, 0]},
        {**good, "fn": "sideways"},
        {**good, "size": 15},
        {**good, "module": "nope"},
        {**good, "extra": 1},
    ):
        with pytest.raises(UnsafeInputError):
            replay_ops(mlp(), [{"op": "prune-channels", "data": {"groups": [[bad]], "attrs": {}}}])
    with pytest.raises(UnsafeInputError, match="may not set"):
        replay_ops(mlp(), [{"op": "prune-channels", "data": {"groups": [], "attrs": {"0": {"forward": 1}}}}])
