"""Int8Static (BN folded, ReLU fused, calibrated) and Int8QAT on CNNs: accuracy, module types, replay, bad data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load, save

import torchslim as ts
from torchslim.core.context import Context
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError
from torchslim.quantization import Int8DynamicLinear, Int8QAT, Int8Static, Int8StaticConv2d, Int8StaticLinear
from torchslim.quantization.common.sqnr import sqnr
from torchslim.workloads.digits import DigitsCNN


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    m = DigitsCNN(widths=(8, 16))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def images(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def digits():
    from torchslim.workloads import get_workload

    wl = get_workload("digits")
    return wl, wl.model(), wl.context()


@pytest.mark.parametrize("observer", ["minmax", "moving-average", "percentile", "mse"])
def test_static_cnn_output_sqnr_fusion_and_uint8_chain(observer):
    m = small_cnn()
    x = images()
    ref = m(x)
    ts.compress_(m, Int8Static(observer=observer), ctx=Context(calibration=[(images(32, 1),), (images(32, 2),)]))
    convs = [mod for mod in m.features if isinstance(mod, Int8StaticConv2d)]
    assert len(convs) == 2 and all(c.relu for c in convs)
    assert convs[0].output_uint8 and not convs[1].output_uint8  # conv -> maxpool -> conv stays uint8
    assert isinstance(m.classifier, Int8StaticLinear)
    assert not any(isinstance(mod, (nn.ReLU, nn.BatchNorm2d)) for mod in m.modules())
    assert sqnr(ref, m(x)) >= 25


@pytest.mark.parametrize("shape", [(4, 16, 3, 1, 1), (16, 8, 1, 2, 0), (8, 8, 3, 1, 2)], ids=str)
def test_static_layer_sqnr_floor_and_fallback_path_agree(shape, monkeypatch):
    cin, cout, k, stride, pad = shape
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
    x = torch.relu(torch.randn(8, cin, 10, 10, generator=torch.Generator().manual_seed(0)))
    m = nn.Sequential(conv)
    ref = conv(x)
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[x]))
    fast = m(x)
    assert sqnr(ref, fast) >= 30
    monkeypatch.setattr(Int8StaticConv2d, "_onednn_ok", lambda self, x: False)
    torch.testing.assert_close(m(x), fast, atol=1e-4, rtol=1e-4)  # same quantized arithmetic in float


def test_static_linear_sqnr_and_fallback(monkeypatch):
    lin = nn.Linear(64, 10)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    m = nn.Sequential(lin)
    ref = lin(x)
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[x]))
    assert sqnr(ref, m(x)) >= 30
    fast = m(x)
    monkeypatch.setattr(Int8StaticLinear, "_onednn_ok", lambda self, x: False)
    torch.testing.assert_close(m(x), fast, atol=1e-4, rtol=1e-4)


def test_static_replay_and_bit_exact_round_trip():
    m = small_cnn()
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[(images(),)]))
    ops = structure_ops(m)
    assert [o["op"] for o in ops] == ["fold-batchnorm", "int8-modules", "int8-fuse-relu"]
    fresh = replay_ops(small_cnn(), ops)
    assert {k: (v.shape, v.dtype) for k, v in fresh.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in m.state_dict().items()
    }
    fresh.load_state_dict(load(save({k: v.contiguous() for k, v in m.state_dict().items()})), strict=True)
    x = images(8, 3)
    assert torch.equal(fresh(x), m(x))


@pytest.mark.parametrize(
    "cal",
    [torch.zeros(4, 1, 8, 8), torch.full((4, 1, 8, 8), 0.5), images(1)],
    ids=["zeros", "constant", "single-sample"],
)
def test_static_degenerate_calibration_is_finite(cal):
    m = small_cnn()
    ts.compress_(m, Int8Static(), ctx=Context(calibration=[(cal,)]))
    for name, t in m.state_dict().items():
        if t.is_floating_point():
            assert torch.isfinite(t).all() and (not name.endswith("scale") or (t > 0).all()), name
    assert torch.isfinite(m(images())).all()


def test_static_bad_calibration_raises_naming_the_layer():
    bad = images(4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="'features.0'.*NaN"):
        ts.compress_(small_cnn(), Int8Static(), ctx=Context(calibration=[(bad,)]))
    with pytest.raises(ConfigError, match="calibration"):
        ts.compress_(small_cnn(), Int8Static())


def test_static_unsupported_padding_is_skipped_and_listed():
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(4, 4, 3))
    ctx = Context(calibration=[images(4)])
    ts.compress_(m, Int8Static(), ctx=ctx)
    assert type(m[0]) is nn.Conv2d and isinstance(m[2], Int8StaticConv2d)
    assert any("skipped 0" in e for e in ctx.events)
    assert m(images(2)).shape == (2, 4, 6, 6)


def test_digits_static_accuracy_within_0_3_points(digits):
    wl, teacher, ctx = digits
    base = wl.evaluate(teacher)["accuracy"]
    q = ts.compress_(copy.deepcopy(teacher), Int8Static(), ctx=ctx)
    assert wl.evaluate(q)["accuracy"] >= base - 0.003
    assert ts.measure(q).size_bytes < 0.3 * ts.measure(teacher).size_bytes


def test_qat_converts_to_the_ptq_module_types_and_keeps_accuracy(digits):
    wl, teacher, ctx = digits
    ptq = ts.compress_(copy.deepcopy(teacher), Int8Static(), ctx=ctx)
    qat = ts.compress_(copy.deepcopy(teacher), Int8QAT(epochs=1, lr=1e-4), ctx=ctx)
    assert {n: type(m) for n, m in qat.named_modules()} == {n: type(m) for n, m in ptq.named_modules()}
    assert structure_ops(qat) == structure_ops(ptq)  # the same artifact layout: load does not care how
    assert wl.evaluate(qat)["accuracy"] >= wl.evaluate(teacher)["accuracy"] - 0.003
    assert not any(p.requires_grad and p.grad is not None for p in qat.parameters())


def test_qat_dynamic_scheme_gives_int8_dynamic_linears():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    m = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    ref = m(x)
    ts.compress_(m, Int8QAT(scheme="dynamic", epochs=1, lr=1e-5), ctx=Context(train_data=lambda: [(x, y)]))
    assert isinstance(m[0], Int8DynamicLinear) and isinstance(m[2], Int8DynamicLinear)
    assert sqnr(ref, m(x)) > 20


def test_qat_needs_training_data():
    with pytest.raises(ConfigError, match="training data"):
        ts.compress_(small_cnn(), Int8QAT(), ctx=Context(calibration=[(images(),)]))


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so ReLU fusion falls back to nn.Sequential scans."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if bool(y.sum() >= 0) else -y


def test_untraceable_model_still_folds_fuses_and_quantizes():
    m = _Untraceable().eval()
    x = images(8)
    ref = m(x)
    ctx = Context(calibration=[(x,)])
    ts.compress_(m, Int8Static(), ctx=ctx)
    assert isinstance(m.body[0], Int8StaticConv2d) and m.body[0].relu
    assert [type(c) for c in m.body] == [Int8StaticConv2d, nn.Identity, nn.Identity]
    assert sqnr(ref, m(x)) >= 25
