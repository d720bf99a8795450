from __future__ import annotations

import pytest
import torch

from torchslim.errors import ConfigError
from torchslim.quantization.common.primitives import (
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    amin_amax,
    choose_qparams,
    dequantize,
    fake_quantize,
    qparams_from_minmax,
    qrange,
    quantize,
)
from torchslim.quantization.common.sqnr import sqnr

GRANULARITIES = [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(16), PerToken()]


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=lambda g: g.to_json())
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_error_is_within_half_a_step(granularity, symmetric, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 64, generator=g) * torch.logspace(-2, 1, 64)).to(dtype)
    scale, zp = choose_qparams(x, granularity, symmetric=symmetric)
    assert torch.isfinite(scale).all() and (scale > 0).all() and zp.dtype == torch.int32
    q = quantize(x, scale, zp, granularity, symmetric=symmetric)
    assert q.dtype == torch.int8 and q.shape == x.shape
    lo, hi = qrange(8, symmetric)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    xhat = dequantize(q, scale, zp, granularity)
    step = (
        scale.expand_as(x.reshape(*x.shape[:-1], -1, 16)).reshape(x.shape)
        if isinstance(granularity, PerGroup)
        else scale.expand_as(x)
    )
    assert ((xhat - x.float()).abs() <= step / 2 + 1e-6).all()
    assert sqnr(x.float(), xhat) > 30


def test_finer_granularity_is_never_worse():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=g) * torch.logspace(-3, 0, 64)[:, None]  # rows of very different range
    errs = {}
    for gran in (PerTensor(), PerChannel(0), PerGroup(32)):
        s, z = choose_qparams(w, gran)
        errs[type(gran).__name__] = sqnr(w, dequantize(quantize(w, s, z, gran), s, z, gran))
    assert errs["PerTensor"] < errs["PerChannel"] <= errs["PerGroup"] + 0.5
    assert errs["PerChannel"] > 38


@pytest.mark.parametrize(
    "data", [torch.zeros(4, 8), torch.full((4, 8), 3.5), torch.full((4, 8), -2.0), torch.ones(1, 1)]
)
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_and_constant_data_give_finite_scales_and_exact_values(data, symmetric):
    for gran in (PerTensor(), PerToken(), PerChannel(0)):
        s, z = choose_qparams(data, gran, symmetric=symmetric)
        assert torch.isfinite(s).all() and (s > 0).all()
        xhat = dequantize(quantize(data, s, z, gran, symmetric=symmetric), s, z, gran)
        assert not torch.isnan(xhat).any()
        torch.testing.assert_close(xhat, data, atol=float(s.max()) / 2 + 1e-6, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises(bad):
    x = torch.ones(3, 3)
    x[1, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        choose_qparams(x, PerTensor())
    with pytest.raises(ValueError, match="empty"):
        amin_amax(torch.empty(0))


def test_asymmetric_zero_is_exact_and_zero_point_in_range():
    x = torch.tensor([0.0, 0.3, 5.0, 7.1])  # ReLU-like, all >= 0
    s, z = qparams_from_minmax(x.min(), x.max(), symmetric=False)
    q = quantize(x, s, z, symmetric=False)
    assert int(z) == -128 and int(q[0]) == -128
    assert float(dequantize(q, s, z)[0]) == 0.0


def test_group_size_must_divide_and_be_valid():
    with pytest.raises(ValueError, match="multiple of group_size"):
        choose_qparams(torch.ones(2, 30), PerGroup(16))
    with pytest.raises(ConfigError):
        PerGroup(1)


def test_fake_quantize_matches_quantize_and_passes_gradient():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 32, generator=g, requires_grad=True)
    s, z = choose_qparams(x.detach(), PerToken())
    y = fake_quantize(x, s, z, PerToken())
    torch.testing.assert_close(y.detach(), dequantize(quantize(x.detach(), s, z, PerToken()), s, z, PerToken()))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))  # min-max range: nothing clipped, STE passes all


def test_sqnr_values():
    x = torch.ones(10)
    assert sqnr(x, x) == float("inf")
    assert sqnr(x, x * 1.01) == pytest.approx(40.0, abs=0.01)
