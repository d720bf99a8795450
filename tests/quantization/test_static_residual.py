"""Int8Static keeps residual networks in uint8 between layers: residual adds fold into the int8 conv (oneDNN
sum post-op) or run as ``Int8Add`` on codes, the head's global average pool reads codes, a stem's max-pool
hands codes on. Checked against eager fp32 (stated tolerances), against the float reference arithmetic
other devices run, by the dtypes that flow between the layers, and through save / load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.api import compress_
from torchslim.bench.vision_nets import BasicBlock, InvertedResidual, SqueezeExcite
from torchslim.core.context import Context
from torchslim.quantization import Int8Static, Int8StaticConv2d, Int8StaticLinear
from torchslim.quantization.int8.static_add import Int8Add, Int8GlobalAvgPool2d, as_quint8, codes_of
from torchslim.quantization.int8.static_paths import Int8MaxPool2d


def _cbn(cin: int, cout: int, k: int, stride: int = 1, act: type[nn.Module] | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


def _init_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial folded BatchNorms
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


def resnet_like() -> nn.Module:
    """A ResNet stem, an identity and a projection basic block, the pooled head (He et al. 2015)."""
    torch.manual_seed(0)
    return _init_bn(
        nn.Sequential(
            _cbn(3, 16, 3, act=nn.ReLU),
            nn.MaxPool2d(3, 2, 1),
            BasicBlock(16, 16, 1),
            BasicBlock(16, 32, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )
    )


class ActivatedResidual(nn.Module):
    """``relu(conv(x)) + x``: the conv's ReLU fuses into it, so the add cannot be its sum post-op."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(c, c, 3, padding=1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x)) + x


def mobile_like() -> nn.Module:
    """Inverted residuals (one with squeeze-and-excitation) and an activated residual (Sandler et al. 2018)."""
    torch.manual_seed(0)
    se = SqueezeExcite(48, 8, nn.ReLU, nn.Hardsigmoid)
    return _init_bn(
        nn.Sequential(
            _cbn(3, 16, 3, act=nn.Hardswish),
            InvertedResidual(16, 48, 16, 3, 1, nn.Hardswish, None),
            InvertedResidual(16, 48, 16, 3, 1, nn.ReLU, se),
            ActivatedResidual(16),
            nn.Conv2d(16, 16, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
    )


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return compress_(copy.deepcopy(model), Int8Static(), ctx=Context(calibration=[(x,)]))


def _cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(F.cosine_similarity(out.float(), ref, dim=1).min())


def _dtypes(model: nn.Module, x: torch.Tensor) -> dict[str, torch.dtype]:
    """The dtype each named module hands on."""
    seen: dict[str, torch.dtype] = {}
    handles = [
        m.register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, out.dtype))
        for n, m in model.named_modules()
        if n
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.usefixtures("int8_kernels")
def test_resnet_blocks_stay_uint8_between_the_int8_layers() -> None:
    m = resnet_like()
    x = torch.randn(32, 3, 24, 24)
    q = _calibrated(m, x)
    dtypes = _dtypes(q, x)
    # Every block, the stem's conv and max-pool hand codes on; only the head's pool dequantizes (to the Linear).
    assert [dtypes[n] for n in ("0.0", "1", "2", "3")] == [torch.uint8] * 4
    assert dtypes["4"] == torch.float32 and isinstance(q[4], Int8GlobalAvgPool2d)
    assert isinstance(q[1], Int8MaxPool2d) and not q[1].dequantize
    for block in (q[2], q[3]):  # the add + ReLU folded into conv2 (sum post-op), no float add left
        assert not [n for n in block.graph.nodes if n.op == "call_function"]
        assert block.get_submodule("conv2.0").accumulate_relu is True
    convs = [n for n, mod in q.named_modules() if isinstance(mod, Int8StaticConv2d)]
    assert all(dtypes[n] == torch.uint8 for n in convs)
    with torch.no_grad():
        ref, out = m(x), q(x)
    assert _cosine(ref, out) > 0.99  # tolerance: 8-bit activations through 6 convs of a random net


@pytest.mark.usefixtures("int8_kernels")
def test_mobile_blocks_add_on_codes_and_se_products_become_codes() -> None:
    m = mobile_like()
    x = torch.randn(32, 3, 16, 16)
    q = _calibrated(m, x)
    dtypes = _dtypes(q, x)
    assert dtypes["1"] == torch.uint8  # inverted residual: the add folded into the projection conv
    assert dtypes["2"] == torch.uint8  # the add still on codes
    assert dtypes["2.int8_scale0"] == torch.uint8  # the SE product handed to the projection as its codes
    assert isinstance(q[3].int8_add0, Int8Add) and dtypes["3"] == torch.uint8  # relu(conv(x)) + x: Int8Add
    with torch.no_grad():
        ref, out = m(x), q(x)
    assert _cosine(ref, out) > 0.99


@pytest.mark.parametrize("build", [resnet_like, mobile_like])
def test_matches_the_float_reference_arithmetic(build, monkeypatch: pytest.MonkeyPatch) -> None:
    # oneDNN / quantized kernels against the path other devices run (the same quantized arithmetic in float).
    m = build()
    x = torch.randn(16, 3, 16, 16)
    q = _calibrated(m, x)
    with torch.no_grad():
        fast = q(x)
        for cls in (Int8StaticConv2d, Int8StaticLinear, Int8Add):
            monkeypatch.setattr(cls, "_onednn_ok", lambda self, x: False)
        slow = q(x)
    # Rounding may differ by a code where the two paths order their float operations differently.
    assert _cosine(fast, slow) > 0.995


@pytest.mark.parametrize("build", [resnet_like, mobile_like])
def test_save_load_round_trip(build, tmp_path) -> None:
    m = build()
    x = torch.randn(8, 3, 16, 16)
    q = _calibrated(m, x)
    ts.save(q, tmp_path / "m")
    back = ts.load(tmp_path / "m", build)
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


@pytest.mark.parametrize("build", [resnet_like, mobile_like])
def test_quantized_and_loaded_under_inference_mode(build, tmp_path) -> None:
    # Tensors made under torch.inference_mode keep no version counter, so the modules' caches could not see them
    # written in place (the stem pool's dequantize and Int8Add raised reading it; a ResNet-18 quantized there
    # gave silently wrong logits). compress_ and load leave inference mode: the same model, ordinary tensors,
    # also from a model copied under inference mode (_calibrated deep-copies it there).
    m = build()
    x = torch.randn(8, 3, 16, 16)
    expected = _calibrated(m, x)
    with torch.no_grad():
        want = expected(x)
    with torch.inference_mode():
        q = _calibrated(m, x)
        assert not any(t.is_inference() for t in [*q.parameters(), *q.buffers()])
        assert torch.equal(q(x), want)
    with torch.no_grad():
        assert torch.equal(q(x), want)
    ts.save(expected, tmp_path / "m")
    with torch.inference_mode():
        back = ts.load(tmp_path / "m", build)
        assert torch.equal(back(x), want)


@pytest.mark.usefixtures("int8_kernels")
def test_int8_add_matches_float_add_of_the_codes() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 8, 5, 5), dtype=torch.uint8, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    b = torch.randn(2, 8, 5, 5, generator=g)  # a float operand is quantized with its qparams first
    for relu in (False, True):
        add = Int8Add(relu=relu)
        add.set_qparams((0.02, 100), (0.03, 128), (0.05, 90))
        fa = (a.float() - 100) * 0.02
        fb = (torch.clamp(torch.round(b / 0.03) + 128, 0, 255) - 128) * 0.03
        ref = torch.relu(fa + fb) if relu else fa + fb
        want = torch.clamp(torch.round(ref / 0.05) + 90, 0, 255)
        got = add(a, b)
        assert got.dtype == torch.uint8
        assert (got.float() - want).abs().max() <= 1  # one code: the kernel rounds its rescaled sum once
        add.output_uint8 = False
        assert torch.allclose(add(a, b), (want - 90) * 0.05, atol=0.05 + 1e-6)


def test_quint8_views_share_the_codes() -> None:
    codes = torch.arange(24, dtype=torch.uint8).reshape(1, 2, 3, 4).contiguous(memory_format=torch.channels_last)
    q = as_quint8(codes, 0.5, 2)
    assert q.data_ptr() == codes.data_ptr() and torch.equal(q.int_repr(), codes)
    back = codes_of(q)
    assert back.data_ptr() == codes.data_ptr() and back.stride() == codes.stride()


def test_global_pool_of_codes_is_the_dequantized_mean() -> None:
    pool = Int8GlobalAvgPool2d()
    pool.set_qparams((0.1, 7))
    codes = torch.randint(0, 256, (3, 5, 7, 6), dtype=torch.uint8)
    ref = F.adaptive_avg_pool2d((codes.float() - 7) * 0.1, 1)
    assert torch.allclose(pool(codes), ref, atol=1e-5)
    assert torch.equal(pool(ref), F.adaptive_avg_pool2d(ref, 1))  # floats pass as before


@pytest.mark.parametrize("native", [True, False])  # torchslim's kernel where it takes the call, torch's quantized pool
@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil"), [(3, 2, 1, False), (2, 2, 0, True), (3, 1, 1, False)])
def test_uint8_max_pool_is_exact(kernel, stride, padding, ceil, native, monkeypatch) -> None:
    pool = Int8MaxPool2d.from_float(nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil))
    if not native:
        monkeypatch.setattr(Int8MaxPool2d, "_native", lambda self, x, dilation: False)
    x = torch.randint(0, 256, (2, 4, 17, 15), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    want = F.max_pool2d(x.float(), kernel, stride, padding, ceil_mode=ceil).to(torch.uint8)
    assert torch.equal(pool(x), want)


@pytest.mark.slow  # ONNX export: ~10 s per network
@pytest.mark.parametrize("build", [resnet_like, mobile_like])
def test_exports_through_the_float_reference_path(build, tmp_path) -> None:
    from torchslim.export import export_onnx

    m = build()
    x = torch.randn(8, 3, 16, 16)
    # Exported: the reference path (float adds of fake-quantized activations) vs uint8 codes in eager.
    assert export_onnx(_calibrated(m, x), (x,), tmp_path / "m.onnx") < 0.05
