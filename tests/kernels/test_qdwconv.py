"""The int8 depthwise convolution kernel (torchslim.kernels.qdwconv) against its exact torch reference, its
layout and errors; and the static int8 modules' depthwise layers on it against their oneDNN path."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from op_calls import OpCalls

from torchslim.kernels import qconv, qdwconv
from torchslim.quantization.int8 import static_small

# (batch, channels, H, W, kernel, stride, padding): channels not a multiple of 16 (masked blocks) and more
# than 8 whole windows per row (the 8-pixel inner loop), kernels larger than the image, one pixel, no
# padding, 7 × 7, and a call large enough to split over threads.
SHAPES = [
    (1, 24, 5, 5, 3, 1, 1),
    (2, 40, 9, 7, 5, 2, 2),
    (1, 1, 3, 3, 3, 1, 1),
    (3, 17, 8, 8, 3, 2, 1),
    (1, 72, 14, 14, 5, 1, 2),
    (1, 33, 4, 6, 3, 1, 0),
    (2, 16, 7, 7, 7, 1, 3),
    (1, 200, 3, 3, 5, 1, 2),
    (1, 8, 1, 1, 3, 1, 1),
    (1, 32, 40, 40, 3, 1, 1),
]


def _case(b, c, h, w, k, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=gen, dtype=torch.uint8)
    weight = torch.randint(-127, 128, (c, 1, k, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(c, generator=gen) * 1e-3 + 1e-5
    return x.contiguous(memory_format=torch.channels_last), weight, scale, torch.randn(c, generator=gen)


def _paths(compiled: str) -> list[str]:
    return ["auto", "portable"] + (["avx512-vnni"] if qdwconv.fast() else [])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", qconv.ACTIVATIONS)
def test_matches_reference(compiled, shape, act):
    b, c, h, w, k, s, p = shape
    x, weight, scale, bias = _case(b, c, h, w, k, seed=sum(shape))
    taps, wsum = qdwconv.pack_depthwise(weight)
    geometry = ((k, k), (s, s), (p, p))
    ref = qdwconv.depthwise_reference(x, weight, scale, bias, 117, (s, s), (p, p), act)
    qref = qdwconv.depthwise_reference(x, weight, scale, bias, 117, (s, s), (p, p), act, 0.05, 100, True)
    for isa in _paths(compiled):
        y = qdwconv.depthwise(x, taps, wsum, scale, bias, 117, *geometry, act=act, isa=isa)
        assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
        q = qdwconv.depthwise(x, taps, wsum, scale, bias, 117, *geometry, act=act, out=(0.05, 100), isa=isa)
        diff = (q.int() - qref.int()).abs()
        assert q.dtype == torch.uint8 and q.shape == qref.shape
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01  # a code may round apart at a tie


@pytest.mark.parametrize("geometry", [((3, 5), (2, 1), (1, 2)), ((1, 3), (1, 2), (0, 1)), ((5, 1), (1, 1), (3, 0))])
def test_rectangular_kernels_and_strides(compiled, geometry):
    (kh, kw), stride, padding = geometry
    gen = torch.Generator().manual_seed(kh * 10 + kw)
    x = torch.randint(0, 256, (2, 40, 11, 19), generator=gen, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last
    )
    weight = torch.randint(-127, 128, (40, 1, kh, kw), generator=gen, dtype=torch.int8)
    scale, bias = torch.rand(40, generator=gen) * 1e-3, torch.randn(40, generator=gen)
    taps, wsum = qdwconv.pack_depthwise(weight)
    ref = qdwconv.depthwise_reference(x, weight, scale, bias, 9, stride, padding, "hardswish")
    for isa in _paths(compiled):
        y = qdwconv.depthwise(x, taps, wsum, scale, bias, 9, (kh, kw), stride, padding, act="hardswish", isa=isa)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_float_input_quantized_inside(compiled):
    x, weight, scale, bias = _case(2, 24, 6, 6, 3, seed=5)
    values = ((x.float() - 117.0) * 0.03 + torch.randn(x.shape) * 0.01).contiguous(memory_format=torch.channels_last)
    codes = torch.clamp(torch.round(values * (1 / 0.03)) + 117, 0, 255).to(torch.uint8)
    taps, wsum = qdwconv.pack_depthwise(weight)
    ref = qdwconv.depthwise_reference(codes, weight, scale, bias, 117, (1, 1), (1, 1), "relu")
    for isa in _paths(compiled):
        y = qdwconv.depthwise(values, taps, wsum, scale, bias, 117, (3, 3), (1, 1), (1, 1), act="relu", x_scale=0.03,
                              isa=isa)  # fmt: skip
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_layout_and_errors(compiled):
    weight = torch.randint(-127, 128, (20, 1, 3, 5), dtype=torch.int8)
    taps, wsum = qdwconv.pack_depthwise(weight)
    assert taps.shape == (3, 2, 32, 4) and taps.dtype == torch.int8  # 5 taps in 2 quads, 20 channels padded to 32
    for i in range(3):
        for j in range(5):
            assert torch.equal(taps[i, j // 4, :20, j % 4], weight[:, 0, i, j])
    assert taps[:, 1, :, 1:].abs().sum() == 0 and taps[:, :, 20:].abs().sum() == 0  # taps past kw, channels past C
    assert torch.equal(wsum[:20], weight.sum((1, 2, 3), dtype=torch.int32)) and wsum[20:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[C, 1, kh, kw\]"):
        qdwconv.pack_depthwise(torch.zeros(4, 2, 3, 3, dtype=torch.int8))
    x = torch.zeros(1, 20, 4, 4, dtype=torch.uint8)
    scale, bias = torch.ones(20), torch.zeros(20)
    with pytest.raises(RuntimeError, match="weight must be contiguous int8"):
        qdwconv.depthwise(x, taps[:, :, :16], wsum, scale, bias, 0, (3, 5), (1, 1), (1, 2))
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        qdwconv.depthwise(x[:, :, :2, :2], taps, wsum, scale, bias, 0, (3, 5), (1, 1), (0, 0))
    with pytest.raises(RuntimeError, match="unknown isa"):
        qdwconv.depthwise(x, taps, wsum, scale, bias, 0, (3, 5), (1, 1), (1, 2), isa="amx")
    if not qdwconv.fast():
        with pytest.raises(RuntimeError, match="lacks avx512-vnni or avx512-vbmi"):
            qdwconv.depthwise(x, taps, wsum, scale, bias, 0, (3, 5), (1, 1), (1, 2), isa="avx512-vnni")


def _DwCalls() -> OpCalls:
    """The channels of the ``torchslim::qdwconv`` calls made while it is active."""
    return OpCalls(torch.ops.torchslim.qdwconv.default, lambda args: args[0].shape[1])


class _Block(nn.Module):
    """An inverted residual (Sandler et al. 2018): expand, depthwise (stride 2), project; and a depthwise layer
    whose output is added to its input."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 40, 1), nn.BatchNorm2d(40), act)
        self.dw = nn.Sequential(nn.Conv2d(40, 40, 5, 2, 2, groups=40), nn.BatchNorm2d(40), type(act)())
        self.project = nn.Conv2d(40, 24, 1)
        self.dw_res = nn.Conv2d(24, 24, 3, 1, 1, groups=24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return self.dw_res(y) + y


@pytest.mark.parametrize("act", [nn.ReLU(), nn.Hardswish(), nn.SiLU()])
def test_module_depthwise_layers_match_onednn(compiled, monkeypatch, act):
    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.quantization.int8.static import Int8Static

    torch.manual_seed(0)
    model = _Block(act).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    calib = [(torch.randn(2, 8, 13, 11),) for _ in range(3)]
    compress_(model, Int8Static(), ctx=Context(calibration=calib))
    x = torch.randn(2, 8, 13, 11)
    with torch.inference_mode(), _DwCalls() as calls:
        ours = model(x)
    plain = static_small.eligible
    monkeypatch.setattr(static_small, "eligible", lambda c, x, accumulate=False: c.groups == 1 and plain(c, x))
    with torch.inference_mode():
        onednn = model(x)
    if not qdwconv.fast():  # elsewhere oneDNN (or the exact reference path) keeps the depthwise layers
        assert calls == []
        return
    assert calls == [40, 24]
    torch.testing.assert_close(ours, onednn, rtol=0, atol=0.02 * onednn.abs().max().item())


def test_depthwise_route(compiled):
    """Depthwise layers (groups = channels, no dilation) take the C++ loop where the CPU has AVX-512 VNNI and
    VBMI, up to DEPTHWISE_BYTES of input and DEPTHWISE_MACS multiply-adds, except when a residual operand is
    summed into their output (oneDNN's fused sum keeps those); other grouped convolutions never do."""
    x = torch.zeros(1, 8, 6, 6)
    dw, grouped, dilated = (nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3, groups=2),
                            nn.Conv2d(8, 8, 3, groups=8, dilation=2))  # fmt: skip
    assert static_small.depthwise(dw) and not static_small.depthwise(grouped) and not static_small.depthwise(dilated)
    assert static_small.eligible(dw, x) == qdwconv.fast()
    assert not static_small.eligible(dw, x, accumulate=True)
    side = int((static_small.DEPTHWISE_BYTES // 8) ** 0.5) + 1  # one image of 8 channels over the byte limit
    assert not static_small.eligible(dw, torch.zeros(1, 8, side, side))
    wide = nn.Conv2d(512, 512, 7, padding=3, groups=512)  # 512·7·7 multiply-adds a pixel: over the MAC limit
    assert not static_small.eligible(wide, torch.zeros(1, 512, 28, 28))
    assert static_small.eligible(wide, torch.zeros(1, 512, 7, 7)) == qdwconv.fast()
    assert not static_small.eligible(grouped, x) and not static_small.eligible(dilated, x)
