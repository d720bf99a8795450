"""User models through the int8 / int4 modules: CNN ops after Int8Static convs, and bfloat16 models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.core.context import Context
from torchslim.quantization import Int8Static, Int8StaticConv2d
from torchslim.quantization.int8.static import Int8MaxPool2d, find_relu_pairs


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class PoolNet(nn.Module):
    """conv -> ReLU -> pool -> conv on 16x16 maps (uint8 max-pool kernel limit: 127 pixels per plane)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(*_block(3, 8), pool, *_block(8, 8), nn.MaxPool2d(3, 2, 1), *_block(8, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNetish(nn.Module):
    """A residual add with a ReLU module shared by a conv and the add (as torchvision's BasicBlock)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.stem(x)))
        y = self.conv2(self.relu(self.conv1(x)))
        x = self.relu(x + y)
        return self.head(x.mean(dim=(2, 3)))


class CatUpNet(nn.Module):
    """torch.cat of two conv branches, Upsample, AvgPool2d and a conv read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(*_block(3, 4))
        self.b = nn.Sequential(*_block(3, 4))
        self.up = nn.Upsample(scale_factor=2)
        self.avg = nn.AvgPool2d(2)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = self.avg(self.up(x))
        x = torch.relu(self.shared(x))
        return self.out(torch.relu(self.shared(x)))


def _randomize_bn(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


MODELS = {
    "maxpool": lambda: PoolNet(nn.MaxPool2d(2)),
    "avgpool": lambda: PoolNet(nn.AvgPool2d(2)),
    "adaptive": lambda: PoolNet(nn.AdaptiveAvgPool2d(8)),
    "resnet": ResNetish,
    "cat-upsample": CatUpNet,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_static_cnn_ops_after_int8_convs_match_fp32_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    m = _randomize_bn(MODELS[name]())
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = m(x)
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[(x,)]))
    assert any(isinstance(mod, Int8StaticConv2d) for mod in m.modules())
    with torch.no_grad():
        out = m(x)
    assert out.dtype == torch.float32 and _cos(ref, out) > 0.99
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=MODELS[name])
    with torch.no_grad():
        assert torch.equal(back(x), out)


def test_uint8_passes_only_through_max_pools_to_the_next_conv():
    m = _randomize_bn(PoolNet(nn.MaxPool2d(2)))
    x = torch.rand(4, 3, 16, 16)
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[(x,)]))
    convs = [mod for mod in m.features if isinstance(mod, Int8StaticConv2d)]
    assert [c.output_uint8 for c in convs] == [True, True, False]  # the last one feeds the average pool
    assert [type(mod) for mod in m.features if isinstance(mod, nn.MaxPool2d)] == [Int8MaxPool2d] * 2
    avg = _randomize_bn(PoolNet(nn.AvgPool2d(2)))
    ts.compress_(avg, Int8Static(), ctx=Context(calibration=[(x,)]))
    assert [c.output_uint8 for c in avg.features if isinstance(c, Int8StaticConv2d)] == [False, True, False]


def test_a_conv_read_twice_or_by_cat_emits_float():
    m = CatUpNet().eval()
    x = torch.rand(2, 3, 8, 8)
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[(x,)]))
    assert not any(getattr(mod, "output_uint8", False) for mod in m.modules())


def test_shared_relu_after_a_residual_add_is_not_fused():
    m = ResNetish().eval()
    pairs = find_relu_pairs(m)
    assert "relu" not in pairs.values()  # also applied to x + y: replacing it by Identity would drop it
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert find_relu_pairs(seq) == {"0": "1"}


@pytest.mark.parametrize("hw", [8, 16, 33])
def test_int8_maxpool_pools_uint8_codes_exactly(hw):
    x = torch.randint(0, 256, (2, 5, hw, hw), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    q = Int8MaxPool2d.from_float(pool)
    out = q(x)
    assert out.dtype == torch.uint8
    assert torch.equal(out, pool(x.float()).to(torch.uint8))
    f = torch.randn(2, 5, hw, hw)
    assert torch.equal(q(f), pool(f))


# ---- bfloat16 models: every int8 / int4 module hands on the model's dtype ----------------------------


class TokenNet(nn.Module):
    """Embedding -> LayerNorm -> MLP: a bfloat16 LayerNorm refuses float32 inputs from an int8 embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 4))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(self.emb(ids)))


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _config(name: str):
    from torchslim.quantization import Int4WeightOnly, Int8Dynamic, Int8WeightOnly

    return {
        "int8-weight-only": Int8WeightOnly,
        "int8-dynamic": Int8Dynamic,
        "int4-rtn": Int4WeightOnly,
        "int8-static": Int8Static,
    }[name]()


BF16_MODELS = {
    "tokens": (TokenNet, lambda: torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))),
    "encoder": (_encoder, lambda: torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(0))),
}


@pytest.mark.parametrize("technique", ["int8-weight-only", "int8-dynamic", "int4-rtn", "int8-static"])
@pytest.mark.parametrize("model", list(BF16_MODELS))
def test_bfloat16_model_quantizes_and_stays_bfloat16(model, technique, tmp_path):
    build, data = BF16_MODELS[model]

    def factory() -> nn.Module:
        torch.manual_seed(0)
        return build().eval().to(torch.bfloat16)

    m = factory()
    x = data()
    x = x if x.dtype == torch.int64 else x.to(torch.bfloat16)
    with torch.no_grad():
        ref = m(x)
        ts.compress_(m, _config(technique), ctx=Context(calibration=[(x,)]))
        out = m(x)
    assert out.dtype == torch.bfloat16 and _cos(ref, out) > 0.99
    ts.save(m, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(ts.load(tmp_path / "a", factory=factory)(x), out)
