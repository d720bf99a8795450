"""Int4 weight-only: primitives, kernel vs reference, algorithms vs RTN, config, round trips, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.calibration import hessian_from_inputs
from torchslim.core.config import config_from_dict
from torchslim.core.context import Context
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.quantization import Int4WeightOnly, Int4WeightOnlyLinear
from torchslim.quantization.common.sqnr import output_error, sqnr
from torchslim.quantization.int4.awq import awq_quantize
from torchslim.quantization.int4.gptq import gptq_quantize
from torchslim.quantization.int4.hqq import hqq_quantize
from torchslim.quantization.int4.modules import DEQUANT_MIN_ROWS
from torchslim.quantization.int4.primitives import (
    dequantize_int4,
    minmax_qparams,
    pack_int4,
    quantize_int4,
    unpack_int4,
)
from torchslim.quantization.int4.rtn import rtn_quantize

GROUPS = [32, 64, 128, 256]
METHODS = ["rtn", "gptq", "awq", "hqq"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- primitives


@pytest.mark.parametrize("shape", [(1, 2), (16, 64), (7, 256), (3, 5, 32)], ids=str)
def test_pack_unpack_round_trip_is_exact(shape):
    q = torch.randint(0, 16, shape, generator=gen(), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(unpack_int4(packed), q)
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 256)  # every byte value unpacks and repacks
    assert torch.equal(pack_int4(unpack_int4(every)), every)


def test_pack_rejects_odd_width_and_out_of_range_codes():
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..15"):
        pack_int4(torch.full((1, 2), 16, dtype=torch.uint8))


@pytest.mark.parametrize("group_size", GROUPS)
def test_quantize_dequantize_codes_are_nearest_and_error_bounded(group_size):
    w = torch.randn(24, 512, generator=gen())
    scale, zero = minmax_qparams(w, group_size)
    assert scale.shape == (24, 512 // group_size) and torch.equal(scale, scale.bfloat16().float())
    q = quantize_int4(w, scale, zero, group_size)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    w_hat = dequantize_int4(q, scale, zero, group_size)
    # Min-max: every weight is within half a step (plus the bf16 rounding of the parameters) of its level.
    step = scale.repeat_interleave(group_size, dim=1)
    assert bool(((w - w_hat).abs() <= 0.5 * step + 0.02 * w.abs().amax()).all())
    assert sqnr(w, w_hat) >= 15


def test_constant_and_zero_groups_give_finite_exactish_values():
    w = torch.cat([torch.zeros(4, 32), torch.full((4, 32), 0.75)], dim=1)
    t = rtn_quantize(w, 32)
    w_hat = dequantize_int4(*t, 32)
    assert torch.isfinite(t.scale).all() and torch.isfinite(t.zero).all()
    assert torch.allclose(w_hat, w, atol=1e-6)


# ---------------------------------------------------------------- module and kernels


@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("m", [1, 7, 64, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_path_matches_dequantize_reference(group_size, m, dtype):
    """The int4 kernel (few rows) and the bf16 GEMM (≥ DEQUANT_MIN_ROWS rows) match the fp32 reference."""
    lin = nn.Linear(512, 96)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 512, generator=gen()) * 0.05)
    fast = Int4WeightOnlyLinear.from_float(lin, group_size)
    ref = Int4WeightOnlyLinear.from_float(lin, group_size, kernel=False)
    x = torch.randn(2, m, 512, generator=gen(1)).to(dtype)
    y_fast, y_ref = fast(x), ref(x.float())
    assert y_fast.dtype == dtype and y_fast.shape == (2, m, 96)
    rel = (y_fast.float() - y_ref).norm() / y_ref.norm()
    assert rel < 1e-2
    assert (fast._packed_cache is not None) == (2 * m < DEQUANT_MIN_ROWS)  # which fast path ran


def test_unsupported_shape_takes_the_dequantize_path():
    lin = nn.Linear(64, 10)  # N % 16 != 0: the CPU kernel refuses it
    q = Int4WeightOnlyLinear.from_float(lin, 32)
    x = torch.randn(3, 64, generator=gen())
    assert sqnr(lin(x), q(x)) >= 15 and q._packed_cache is None


@pytest.mark.parametrize(("group_size", "bias"), [(32, True), (64, False), (128, True), (256, False)])
def test_layer_sqnr_floor(group_size, bias):
    lin = nn.Linear(256, 64, bias=bias)
    x = torch.randn(16, 256, generator=gen())
    for method in METHODS:
        ctx = Context(calibration=[x])
        m = nn.Sequential(nn.Linear(256, 64, bias=bias))
        m.load_state_dict({f"0.{k}": v for k, v in lin.state_dict().items()})
        ts.compress_(m, Int4WeightOnly(group_size=group_size, method=method), ctx=ctx)
        assert isinstance(m[0], Int4WeightOnlyLinear)
        assert sqnr(lin(x), m(x)) >= 15, method


def test_kernel_cache_is_rebuilt_after_load_and_not_saved():
    a = Int4WeightOnlyLinear.from_float(nn.Linear(128, 32), 64)
    b = Int4WeightOnlyLinear.from_float(nn.Linear(128, 32), 64)
    x = torch.randn(2, 128, generator=gen())
    b(x)  # builds b's kernel layout
    assert sorted(b.state_dict()) == ["bias", "scales", "weight", "zeros"]
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_quantized_under_inference_mode_runs_inside_and_outside_it():
    # Buffers made under torch.inference_mode keep no version counter; the kernel cache's key must not read it.
    lin = nn.Linear(128, 32)
    x = torch.randn(2, 128, generator=gen())
    want = Int4WeightOnlyLinear.from_float(lin, 64)(x)
    with torch.inference_mode():
        q = Int4WeightOnlyLinear.from_float(lin, 64)
        assert q.weight.is_inference()
        assert torch.equal(q(x), want)
    with torch.no_grad():
        assert torch.equal(q(x), want)


def test_stored_weight_bytes_at_most_015_of_fp32():
    lin = nn.Linear(1024, 256, bias=False)
    q = Int4WeightOnlyLinear.from_float(lin, 128)
    stored = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert stored <= 0.15 * lin.weight.numel() * 4
    assert q.weight.dtype == torch.uint8 and q.scales.dtype == q.zeros.dtype == torch.bfloat16
    assert q.logical_params() == 1024 * 256


# ---------------------------------------------------------------- algorithms against RTN


def correlated_inputs(k: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    base = torch.randn(k // 8, tokens, generator=g)
    x = torch.randn(k, k // 8, generator=g) @ base + 0.2 * torch.randn(k, tokens, generator=g)
    x[:8] *= 8  # a few high-energy channels, as in transformer activations
    return x


def out_err(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    return float(output_error(w_hat.double() - w.double(), h))


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_beats_rtn_on_correlated_inputs(group_size, act_order):
    w = torch.randn(64, 256, generator=gen(2))
    h = hessian_from_inputs(correlated_inputs(256, 1024))
    rtn = out_err(w, dequantize_int4(*rtn_quantize(w, group_size), group_size), h)
    gptq = out_err(w, dequantize_int4(*gptq_quantize(w, h, group_size, act_order=act_order), group_size), h)
    assert gptq < 0.5 * rtn


@pytest.mark.parametrize("group_size", [32, 128])
def test_awq_beats_rtn_with_salient_channels(group_size):
    w = torch.randn(64, 256, generator=gen(3))
    x = torch.randn(256, 512, generator=gen(4))
    x[:6] *= 30  # salient input channels
    h = hessian_from_inputs(x)
    inv_s, t = awq_quantize(w, h, group_size)
    assert inv_s.shape == (256,) and torch.isfinite(inv_s).all()
    awq = out_err(w, dequantize_int4(*t, group_size) * inv_s, h)
    assert awq < 0.8 * out_err(w, dequantize_int4(*rtn_quantize(w, group_size), group_size), h)


@pytest.mark.parametrize("group_size", [32, 128])
def test_hqq_beats_rtn_on_heavy_tailed_weights(group_size):
    w = torch.randn(64, 256, generator=gen(5)) ** 3
    rtn = dequantize_int4(*rtn_quantize(w, group_size), group_size)
    hqq = dequantize_int4(*hqq_quantize(w, group_size), group_size)
    assert ((hqq - w) ** 2).mean() < 0.9 * ((rtn - w) ** 2).mean()
    assert (hqq - w).abs().mean() < (rtn - w).abs().mean()


# ---------------------------------------------------------------- config, model, round trips


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(50, 64), nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.LayerNorm(64), nn.Linear(64, 32)
    ).eval()


def ids(batch: int = 4, seq: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50, (batch, seq), generator=gen(seed))


def test_config_validation_and_json_round_trip():
    cfg = Int4WeightOnly(group_size=64, method="gptq")
    assert config_from_dict(cfg.to_dict()) == cfg and cfg.kind == "int4-weight-only"
    with pytest.raises(ConfigError, match="group_size"):
        Int4WeightOnly(group_size=100)
    with pytest.raises(ConfigError, match="method"):
        Int4WeightOnly(method="nf4")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"kind": "int4-weight-only", "bits": 4})


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_exact(method, tmp_path):
    m = net()
    x = ids()
    ref = m(x)
    ctx = Context(calibration=[(ids(8, 9, 2),), (ids(8, 9, 3),)])
    ts.compress_(m, Int4WeightOnly(group_size=32, method=method), ctx=ctx)
    assert all(isinstance(m[i], Int4WeightOnlyLinear) for i in (1, 3, 5))
    y = m(x)
    assert sqnr(ref, y) >= 15
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=net)
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert torch.equal(back(x), y)
    fresh = replay_ops(net(), structure_ops(m))  # the replay alone rebuilds the same shapes and classes
    assert {k: (v.shape, v.dtype) for k, v in fresh.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in m.state_dict().items()
    }


def test_model_size_drops_to_about_an_eighth():
    m = nn.Sequential(nn.Linear(512, 1024, bias=False), nn.Linear(1024, 512, bias=False))
    before = ts.measure(m).size_bytes
    ts.compress_(m, Int4WeightOnly(group_size=128))
    assert ts.measure(m).size_bytes <= 0.15 * before


def test_bad_group_size_skips_and_lists_or_raises():
    m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    ctx = Context()
    ts.compress_(m, Int4WeightOnly(group_size=32), ctx=ctx)
    assert isinstance(m[0], Int4WeightOnlyLinear) and type(m[2]) is nn.Linear
    assert any("skipped 1 layer" in e and "2: group size 32 does not divide in_features 48" in e for e in ctx.events)
    m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    with pytest.raises(ConfigError, match="in_features 48"):
        ts.compress_(m, Int4WeightOnly(group_size=32, on_bad_group="error"))
    assert type(m[0]) is nn.Linear  # nothing half-done


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_need_calibration(method):
    m = nn.Sequential(nn.Linear(64, 16))
    with pytest.raises(ConfigError, match="calibration"):
        ts.compress_(m, Int4WeightOnly(group_size=32, method=method))
    assert type(m[0]) is nn.Linear


@pytest.mark.parametrize("method", ["gptq", "awq"])
@pytest.mark.parametrize(
    "batch",
    [torch.zeros(1, 64), torch.ones(1, 64), torch.randn(2, 64, generator=gen())],
    ids=["zeros", "constant", "two-tokens"],
)
def test_rank_deficient_calibration_is_damped_recorded_and_finite(method, batch):
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    ctx = Context(calibration=[batch])
    ts.compress_(m, Int4WeightOnly(group_size=32, method=method), ctx=ctx)
    for name, t in m.state_dict().items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name
    assert torch.isfinite(m(torch.randn(5, 64, generator=gen(1)))).all()
    assert any("rank-deficient" in e for e in ctx.events)


def test_cholesky_failure_falls_back_to_rtn_and_is_recorded(monkeypatch):
    import torchslim.quantization.int4.gptq as gptq_mod

    def broken(h, damp, **_):
        raise torch.linalg.LinAlgError("Hessian is not positive definite even with 1000x damping")

    monkeypatch.setattr(gptq_mod, "inverse_cholesky", broken)
    lin = nn.Linear(64, 16)
    m = nn.Sequential(lin)
    x = torch.randn(32, 64, generator=gen())
    ref = lin(x)
    ctx = Context(calibration=[x])
    ts.compress_(m, Int4WeightOnly(group_size=32, method="gptq"), ctx=ctx)
    rtn = Int4WeightOnlyLinear.from_float(lin, 32)
    assert torch.equal(m[0].weight, rtn.weight) and torch.isfinite(m(x)).all()
    assert sqnr(ref, m(x)) >= 15
    assert any(": 0: gptq failed" in e and "fell back to RTN" in e for e in ctx.events)


def test_nan_weights_are_refused_naming_the_layer():
    m = net()
    with torch.no_grad():
        m[3].weight[0, 0] = float("nan")
    with pytest.raises(UnsupportedModelError, match="'3'"):
        ts.compress_(m, Int4WeightOnly(group_size=32))


def test_sequential_gptq_calibration_beats_rtn_on_a_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    mix = torch.randn(128, 128, generator=gen(7)) / 128**0.5
    cal = [torch.randn(64, 128, generator=gen(s)) @ mix for s in range(4)]
    test = torch.randn(128, 128, generator=gen(99)) @ mix
    ref = m(test)
    out = {}
    for method in ("rtn", "gptq"):
        q = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 64)).eval()
        q.load_state_dict(m.state_dict())
        ts.compress_(q, Int4WeightOnly(group_size=32, method=method), ctx=Context(calibration=cal))
        out[method] = sqnr(ref, q(test))
    assert out["gptq"] > out["rtn"]


def test_builtin_recipe_exists_and_is_valid():
    from torchslim.recipes import builtin_recipes

    recipe = builtin_recipes()["int4-g128"]
    cfg = recipe.steps[0].config
    assert isinstance(cfg, Int4WeightOnly) and cfg.group_size == 128


def test_calibrated_swap_makes_no_float_standin_for_the_last_layer(monkeypatch):
    # Later layers calibrate on a float stand-in of each quantized one; nothing comes after the last (an
    # LLM's head, its largest matrix), so it gets none.
    import torchslim.quantization.int4.weight_only as weight_only

    made = []
    real = weight_only.float_standin
    monkeypatch.setattr(weight_only, "float_standin", lambda new, old: made.append(old) or real(new, old))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    ctx = Context(calibration=[torch.randn(16, 64) for _ in range(2)])
    ts.compress_(model, Int4WeightOnly(group_size=32, method="gptq"), ctx=ctx)
    assert len(made) == 2  # the first two layers, not the last
    assert all(type(m).__name__ == "Int4WeightOnlyLinear" for m in (model[0], model[2], model[4]))
