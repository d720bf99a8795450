"""Int8Static writes a squeeze-and-excite product read by an int8 convolution as that convolution's uint8
codes in one pass (Int8ChannelScale): from a float map, the codes the convolution computed from the float
product before (bit for bit); a map read only by the product and the squeeze pool becomes codes too. Other
products (several readers) are left as they were."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.api import compress_
from torchslim.bench.vision_nets import SqueezeExcite
from torchslim.core.context import Context
from torchslim.quantization import Int8Static
from torchslim.quantization.int8 import static
from torchslim.quantization.int8.static_add import Int8GlobalAvgPool2d
from torchslim.quantization.int8.static_scale import Int8ChannelScale


class SEBlock(nn.Module):
    """Expansion, squeeze-and-excite, projection: the product's only reader is the projection conv."""

    def __init__(self, gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1), nn.ReLU())
        self.se = SqueezeExcite(24, 8, nn.ReLU, gate)
        self.project = nn.Conv2d(24, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.expand(x)))


class MapProduct(nn.Module):
    """Two full maps multiplied (not a gate), read by a conv; and a product read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(8, 8, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(self.a(x) * torch.sigmoid(self.b(x)))
        z = y * torch.sigmoid(y)  # read by the conv below and by the add: stays float
        return self.d(z) + z


def _net(block: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), block, nn.Conv2d(8, 4, 1)).eval()


def _quantized(model: nn.Module, x: torch.Tensor, rewrite: bool = True, monkeypatch=None) -> nn.Module:
    if not rewrite:
        monkeypatch.setattr(static, "int8_channel_scales_", lambda *a, **k: 0)
    return compress_(copy.deepcopy(model), Int8Static(), ctx=Context(calibration=[(x,)]))


def _scales(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Int8ChannelScale)]


@pytest.mark.usefixtures("int8_kernels")  # the uint8 dataflow, on CPUs whose int8 kernels are not exact too
@pytest.mark.parametrize("gate", [nn.Hardsigmoid, nn.Sigmoid])
@pytest.mark.parametrize("channels_last", [False, True])
def test_se_product_and_its_map_become_codes(gate, channels_last, monkeypatch) -> None:
    """The product becomes the projection's codes; the map (the expansion conv's output, read only by the
    product and the squeeze pool) becomes uint8 codes in its own calibrated qparams, which the pool reads."""
    model = _net(SEBlock(gate))
    x = torch.randn(6, 3, 12, 12)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    q = _quantized(model, x)
    assert _scales(q) == ["2.se.int8_scale0"]
    assert isinstance(q[2].se.pool, Int8GlobalAvgPool2d)
    seen = {}
    for name in ("expand", "se.pool", "project"):
        q[2].get_submodule(name).register_forward_pre_hook(lambda m, args, n=name: seen.__setitem__(n, args[0].dtype))
    with torch.inference_mode():
        out, ref = q(x), model(x)
    assert seen == {"expand": torch.uint8, "se.pool": torch.uint8, "project": torch.uint8}
    plain = _quantized(model, x, rewrite=False, monkeypatch=monkeypatch)
    with torch.inference_mode():
        before = plain(x)
    # One more 8-bit rounding (the map's codes): close to the quantized model without it, and to fp32.
    assert torch.nn.functional.cosine_similarity(out.flatten(1), before.flatten(1)).min() > 0.995
    assert torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).min() > 0.99
    scale = q[2].se.int8_scale0
    assert scale._numbers(("input",))[0] == (
        float(q[2].expand[0].output_scale),
        int(q[2].expand[0].output_zero_point) + 128,
    )


def test_product_of_float_map_is_the_torch_product_bit_for_bit(monkeypatch) -> None:
    """A map that stays float (read by more than the product and its pool): the fused product gives the codes
    the projection computed from the float product before."""

    class TwoReaders(SEBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.expand(x)
            return self.project(self.se(y)) + y.mean()

    model = _net(TwoReaders())
    x = torch.randn(4, 3, 12, 12)
    q = _quantized(model, x)
    assert _scales(q) == ["2.se.int8_scale0"] and not isinstance(q[2].se.pool, Int8GlobalAvgPool2d)
    plain = _quantized(model, x, rewrite=False, monkeypatch=monkeypatch)
    with torch.inference_mode():
        assert torch.equal(q(x), plain(x))


def test_other_products_unchanged(monkeypatch) -> None:
    model = _net(MapProduct())
    x = torch.randn(4, 3, 10, 10)
    q = _quantized(model, x)
    assert _scales(q) == ["2.int8_scale0"]  # the map product read by c only; z is read twice
    plain = _quantized(model, x, rewrite=False, monkeypatch=monkeypatch)
    with torch.inference_mode():
        assert torch.equal(q(x), plain(x))  # the torch product, quantized with the conv's qparams


def test_save_load_replays_the_rewrite(tmp_path) -> None:
    model = _net(SEBlock())
    x = torch.randn(4, 3, 12, 12)
    q = _quantized(model, x)
    ts.save(q, tmp_path / "m")
    back = ts.load(tmp_path / "m", lambda: _net(SEBlock()))
    assert _scales(back) == _scales(q)
    with torch.inference_mode():
        assert torch.equal(back(x), q(x))


def test_module_falls_back_to_torch_for_other_operands() -> None:
    scale = Int8ChannelScale()
    scale.set_qparams((0.05, 100))
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    want = torch.clamp(torch.round((a * b) * (1 / 0.05)) + 100, 0, 255).to(torch.uint8)
    assert torch.equal(scale(a, b), want)
    gate = torch.rand(2, 3, 1, 1)
    assert torch.equal(scale(gate, a), scale(a, gate))  # either operand order
    scale.set_qparams((0.05, 100), (0.1, 120))  # a map of codes is read in the input qparams
    codes = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    want = torch.clamp(torch.round((((codes.float() - 120) * 0.1) * gate) * (1 / 0.05)) + 100, 0, 255)
    assert torch.equal(scale(codes, gate), want.to(torch.uint8))
    assert torch.equal(
        scale(codes, a),
        torch.clamp(torch.round(((codes.float() - 120) * 0.1 * a) / 0.05) + 100, 0, 255).to(torch.uint8),
    )
