"""Int8Static's speed paths: Hardswish / SiLU fused into the int8 convolutions (uint8 between a MobileNet
block's convs), a ResNet stem's conv writing uint8 codes that its max-pool pools and dequantizes, and
the uint8 max-pool itself. Each path is checked against eager fp32 (stated tolerances), against the
float reference arithmetic, and through save / load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.api import compress_
from torchslim.core.context import Context
from torchslim.quantization import Int8Static, Int8StaticConv2d, Int8StaticLinear
from torchslim.quantization.int8.static_paths import Int8MaxPool2d, find_pool_ends, max_pool_codes


def _cbn(cin: int, cout: int, k: int, groups: int = 1, act: type[nn.Module] | None = None) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)] + (
        [act()] if act else []
    )


def mobile_block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        *_cbn(3, 24, 3, act=nn.Hardswish),
        *_cbn(24, 24, 3, groups=24, act=nn.SiLU),
        *_cbn(24, 40, 1, act=nn.ReLU),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(40, 32),
        nn.Hardswish(),
        nn.Linear(32, 10),
    ).eval()


class Stem(nn.Module):
    """A ResNet stem and one residual block: the max-pool's output feeds a conv and the add."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(*_cbn(3, 16, 3, act=nn.ReLU))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.body = nn.Sequential(*_cbn(16, 16, 3, act=nn.ReLU), *_cbn(16, 16, 3))
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.stem(x))
        return self.head(self.relu(self.body(y) + y))


def stem_model() -> nn.Module:
    return Stem().eval()


def _calibrated(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    return compress_(copy.deepcopy(model), Int8Static(**kw), ctx=Context(calibration=[(x,)]))


def _agree(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    cos = float(F.cosine_similarity(out.float(), ref, dim=1).mean())
    return cos, float((out.argmax(1) == ref.argmax(1)).float().mean())


def test_hardswish_and_silu_fuse_into_the_int8_convs_and_chain_uint8() -> None:
    m = mobile_block()
    x = torch.randn(64, 3, 12, 12)
    q = _calibrated(m, x)
    acts = {n: (c.activation, c.output_uint8) for n, c in q.named_modules() if isinstance(c, Int8StaticConv2d)}
    assert acts == {"0": ("hardswish", True), "3": ("swish", True), "6": ("relu", False)}
    assert isinstance(q[11], Int8StaticLinear) and q[11].activation == "hardswish"
    assert [type(q[i]) for i in (2, 5, 8, 12)] == [nn.Identity] * 4  # the fused activations
    with torch.no_grad():
        ref, out = m(x), q(x)
        unfused = _calibrated(m, x, fuse_relu=False)(x)
    cos, top1 = _agree(ref, out)
    assert cos > 0.99 and top1 >= 0.9  # tolerance: 8-bit activations on a random 5-layer net
    # Fusing changes where the activation runs, not the quantized arithmetic: the same outputs up to rounding.
    assert float(F.cosine_similarity(out, unfused, dim=1).min()) > 0.995


def test_fused_activations_match_the_float_reference_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    # The oneDNN kernels against the reference path other devices run (int8 weights dequantized, fake-quantized input).
    m = mobile_block()
    x = torch.randn(16, 3, 12, 12)
    q = _calibrated(m, x)
    with torch.no_grad():
        fast = q(x)
        for mod in q.modules():
            if isinstance(mod, (Int8StaticConv2d, Int8StaticLinear)):
                mod.output_uint8 = False  # the reference path hands floats on
        monkeypatch.setattr(Int8StaticConv2d, "_onednn_ok", lambda self, x: False)
        monkeypatch.setattr(Int8StaticLinear, "_onednn_ok", lambda self, x: False)
        slow = q(x)
    assert torch.allclose(fast, slow, atol=0.05 * float(slow.abs().max()))
    assert float(F.cosine_similarity(fast, slow, dim=1).min()) > 0.995


@pytest.mark.parametrize("activation", ["none", "relu", "hardswish", "swish"])
def test_activation_spec_round_trip(activation: str) -> None:
    conv = nn.Conv2d(4, 8, 3)
    mod = Int8StaticConv2d.from_float(conv, torch.tensor(0.1), torch.tensor(0), activation=activation)
    back = Int8StaticConv2d.from_spec(mod.torchslim_spec())
    assert back.activation == activation and back.relu == (activation == "relu")
    lin = Int8StaticLinear.from_float(nn.Linear(4, 3), torch.tensor(0.1), torch.tensor(0), activation=activation)
    assert Int8StaticLinear.from_spec(lin.torchslim_spec()).activation == activation


def test_specs_saved_before_activation_fusion_still_load() -> None:
    old = {"in_channels": 4, "out_channels": 8, "groups": 1, "relu": True, "output_uint8": False}
    old |= {"kernel_size": [3, 3], "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1]}
    assert Int8StaticConv2d.from_spec(old).activation == "relu"
    with pytest.raises(ValueError, match="not supported"):
        Int8StaticConv2d(4, 8, (3, 3), activation="gelu")


def test_stem_conv_writes_codes_the_max_pool_dequantizes(tmp_path) -> None:
    m = stem_model()
    folded = copy.deepcopy(m)
    folded.stem[1] = folded.body[1] = folded.body[4] = nn.Identity()  # as FoldBatchNorm leaves them
    ends = find_pool_ends(folded, {"stem.0", "body.0", "body.3"}, {"stem.2", "body.2"})
    assert ends == {"stem.0": ["stem.1", "stem.2", "pool"]}
    x = torch.randn(32, 3, 24, 24)
    q = _calibrated(m, x)
    assert q.stem[0].output_uint8 and isinstance(q.pool, Int8MaxPool2d) and q.pool.dequantize
    with torch.no_grad():
        ref, out = m(x), q(x)
        assert q.pool(q.stem[0](x)).dtype == torch.float32  # its readers (a conv and the add) get floats
    cos, top1 = _agree(ref, out)
    assert cos > 0.99 and top1 >= 0.9
    ts.save(q, tmp_path / "stem")
    back = ts.load(tmp_path / "stem", stem_model)
    assert isinstance(back.pool, Int8MaxPool2d) and back.pool.dequantize
    with torch.no_grad():
        assert torch.equal(back(x), out)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "shape"),
    [
        (3, 2, 1, 1, (2, 5, 17, 16)),
        (2, 2, 0, 1, (1, 3, 16, 16)),
        (3, 1, 1, 2, (2, 4, 13, 12)),
        (3, 3, 0, 1, (1, 2, 12, 14)),
    ],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_max_pool_codes_is_max_pool2d(kernel, stride, padding, dilation, shape, channels_last) -> None:
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(x.float(), kernel, stride, padding, dilation).to(torch.uint8)
    got = max_pool_codes(x, (kernel,) * 2, (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    assert torch.equal(got, ref)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    pool = Int8MaxPool2d(kernel, stride, padding, dilation)
    assert torch.equal(pool(x), ref)  # large maps take max_pool_codes, small ones the native kernel
