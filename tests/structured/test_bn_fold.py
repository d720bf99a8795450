from __future__ import annotations

import torch
import torch.nn as nn

import torchslim as ts


class Branchy(nn.Module):
    """Conv feeding both a BN and a skip connection: must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)
        self.bn3 = nn.BatchNorm1d(3)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y
        z = self.bn2(self.conv2(z))
        return self.bn3(self.fc(z.mean((2, 3))))


def _randomized_then_folded(m: nn.Module, *shape: int) -> tuple[torch.Tensor, torch.Tensor, ts.Context]:
    """Randomize ``m``'s BatchNorm statistics and affine parameters (seed 1), draw an input ``x`` of ``shape``,
    then fold ``m`` in place; returns ``x``, ``m(x)`` before the fold and the context."""
    torch.manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    x = torch.randn(*shape)
    ref = m(x)
    ctx = ts.Context()
    ts.compress_(m, ts.FoldBatchNorm(), ctx=ctx)
    return x, ref, ctx


def test_fold_keeps_outputs_and_skips_shared_outputs():
    torch.manual_seed(0)
    m = Branchy().eval()
    x, ref, ctx = _randomized_then_folded(m, 4, 2, 6, 6)
    assert isinstance(m.bn, nn.BatchNorm2d)  # conv output also used by the skip
    assert isinstance(m.bn2, nn.Identity) and isinstance(m.bn3, nn.Identity)
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert ctx.events == ["fold-batchnorm: folded 2 BatchNorm layer(s)"]


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return self.body(x)
        return self.body(-x)


def test_fallback_for_untraceable_models():
    m = Untraceable().eval()
    x, ref, ctx = _randomized_then_folded(m, 2, 1, 5, 5)
    assert isinstance(m.body[1], nn.Identity)
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert "could not trace" in ctx.events[0]
