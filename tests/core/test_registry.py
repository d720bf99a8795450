from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.config import Config, register_config
from torchslim.core.registry import lookup, register_transform
from torchslim.errors import RegistryError


@register_config("test-scale-weights")
@dataclass(frozen=True)
class ScaleWeights(Config):
    factor: float = 2.0

    def default_select(self) -> ts.Select:
        return ts.Select(types=("Linear",))


@register_transform(ScaleWeights, scope="module")
def _scale(module: nn.Module, config: ScaleWeights, ctx: ts.Context) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(config.factor)
    return module


@register_config("test-unregistered")
@dataclass(frozen=True)
class Unregistered(Config):
    pass


def test_duplicate_transform_refused():
    with pytest.raises(RegistryError, match="already registered"):
        register_transform(ScaleWeights)(lambda m, c, ctx: m)
    assert lookup(ScaleWeights()).fn is _scale


def test_unknown_transform_lists_registered():
    with pytest.raises(RegistryError, match="no transform registered for Unregistered"):
        ts.compress_(nn.Linear(2, 2), Unregistered())


def test_bad_scope_refused():
    with pytest.raises(RegistryError):
        register_transform(Unregistered, scope="layer")  # type: ignore[arg-type]


def test_compress_uses_default_select_and_returns_model():
    m = nn.Sequential(nn.Linear(2, 2), nn.Conv1d(1, 1, 1))
    w_lin, w_conv = m[0].weight.clone(), m[1].weight.clone()
    out = ts.compress_(m, ScaleWeights(3.0))
    assert out is m
    assert torch.equal(m[0].weight, w_lin * 3.0)
    assert torch.equal(m[1].weight, w_conv)


def test_compress_with_explicit_select_records_when_nothing_changed():
    m = nn.Sequential(nn.Linear(2, 2))
    ctx = ts.Context()
    ts.compress_(m, ScaleWeights(), select=ts.Select(include=("nomatch",)), ctx=ctx)
    assert ctx.events == ["test-scale-weights: no selected module was changed"]
