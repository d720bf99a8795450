"""Outlier decomposition of Int8DynamicLinear and the int8 compile backend (bf16 attention as matmuls)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load, save

import torchslim as ts
from torchslim.core.context import Context
from torchslim.core.modspec import module_from_spec as empty_like_spec
from torchslim.core.modspec import module_spec
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.quantization import Int8Dynamic, Int8DynamicLinear
from torchslim.quantization.common.sqnr import sqnr
from torchslim.quantization.int8 import compile_cpu


def outlier_data(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    """A layer whose input channel 5 is ~100× the rest: it sets every token's int8 scale, the rest round to few levels."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(96, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 96, generator=g) / 96**0.5)
        lin.weight[:, 5] *= 0.01  # ... while contributing to the output like any other channel
    x = torch.randn(256, 96, generator=g)
    x[:, 5] *= 100.0
    return lin, x


def test_outlier_channels_restore_sqnr_and_compute_exactly_the_split_product():
    lin, x = outlier_data()
    plain = sqnr(lin(x), Int8DynamicLinear.from_float(lin)(x))
    q = Int8DynamicLinear.from_float(lin, outliers=torch.tensor([5]))
    split = sqnr(lin(x), q(x))
    assert plain < 30 and split > plain + 15 and split > 35
    # The float part is exactly x[:, 5] ⊗ W[:, 5]; the int8 part never sees channel 5.
    assert q.smooth[5] == 0 and (q.weight[:, 5] == 0).all() and q.smooth.sum() == 95
    assert torch.equal(q.outlier_weight, lin.weight[:, [5]].detach())
    rest = Int8DynamicLinear.from_float(lin, smooth=torch.ones(96))
    with torch.no_grad():
        rest.smooth[5] = 0.0
        rest.weight.copy_(q.weight)
        rest.weight_scale.copy_(q.weight_scale)
    torch.testing.assert_close(q(x), rest(x) + x[:, [5]] @ lin.weight[:, [5]].t().detach())


def test_outliers_combine_with_smoothquant_and_bf16_inputs():
    lin, x = outlier_data(1)
    smooth = torch.rand(96, generator=torch.Generator().manual_seed(2)) + 0.5
    q = Int8DynamicLinear.from_float(lin, smooth=smooth, outliers=torch.tensor([5, 40]))
    assert q.smooth[5] == 0 and q.smooth[40] == 0 and torch.equal(q.smooth[:5], smooth[:5])
    assert sqnr(lin(x), q(x)) > 35
    y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16 and sqnr(lin(x), y.float()) > 25


@pytest.mark.parametrize("bad", [[5, 5], [-1], [96]], ids=["duplicate", "negative", "past-the-end"])
def test_bad_outlier_indices_are_refused(bad):
    lin, _ = outlier_data()
    with pytest.raises(ValueError, match="outlier channels"):
        Int8DynamicLinear.from_float(lin, outliers=torch.tensor(bad))
    with pytest.raises(ValueError, match="smooth"):
        Int8DynamicLinear(8, 4, outliers=2)


def test_outlier_module_spec_state_dict_round_trip_is_bit_exact():
    lin, x = outlier_data()
    q = Int8DynamicLinear.from_float(lin, outliers=torch.tensor([5, 7, 9]))
    spec = module_spec(q)
    assert spec["outliers"] == 3 and spec["smooth"] is True
    fresh = empty_like_spec(spec)
    fresh.load_state_dict(load(save({k: v.contiguous() for k, v in q.state_dict().items()})), strict=True)
    assert torch.equal(fresh(x), q(x))
    assert "outliers=3" in repr(q)


def layered() -> tuple[nn.Module, torch.Tensor]:
    lin, x = outlier_data()
    return nn.Sequential(lin, nn.ReLU(), nn.Linear(48, 8)).eval(), x


def test_int8_dynamic_rescues_a_layer_under_the_floor_with_few_outlier_channels(tmp_path):
    m, x = layered()
    ref = m(x)
    ctx = Context(calibration=[x[:64]])
    ts.compress_(m, Int8Dynamic(min_sqnr_db=35.0, outliers=8, fallback="float32"), ctx=ctx)
    assert isinstance(m[0], Int8DynamicLinear) and 5 in m[0].outlier_idx.tolist()
    assert m[0].outlier_idx.numel() == 4  # the first count tried (4) passes
    assert any("0 keeps 4 outlier input channel(s) in float32" in e for e in ctx.events)
    assert not any("kept in" in e for e in ctx.events)
    assert sqnr(ref, m(x)) > 30
    # Without the budget the layer stays in float, as before.
    plain, _ = layered()
    ctx = Context(calibration=[x[:64]])
    ts.compress_(plain, Int8Dynamic(min_sqnr_db=35.0, fallback="float32"), ctx=ctx)
    assert type(plain[0]) is nn.Linear and any("0 kept in float32" in e for e in ctx.events)
    # The artifact reloads bit-exactly.
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=lambda: layered()[0])
    assert torch.equal(back(x), m(x))


def test_outlier_budget_too_small_falls_back_and_says_so():
    m, x = layered()
    with torch.no_grad():
        x[:, 10:40] *= 100.0  # 31 outlier channels: a budget of 4 cannot pass 35 dB
        m[0].weight[:, 10:40] *= 0.01
    ctx = Context(calibration=[x[:64]])
    ts.compress_(m, Int8Dynamic(min_sqnr_db=35.0, outliers=4, fallback="float32"), ctx=ctx)
    assert type(m[0]) is nn.Linear and any("0 kept in float32" in e for e in ctx.events)


@pytest.mark.parametrize("bad", [{"outliers": -1}, {"outliers": True}, {"outliers": 8}])
def test_outlier_config_validation(bad):
    from torchslim.errors import ConfigError

    with pytest.raises(ConfigError):
        ts.config_from_dict({"kind": "int8-dynamic", **bad})  # 8 without min_sqnr_db: nothing to act on
    cfg = Int8Dynamic(min_sqnr_db=33.0, outliers=32)
    assert ts.config_from_dict(cfg.to_dict()) == cfg


# -- compile backend ----------------------------------------------------------------------------------


def qkv(b=2, h=3, lq=16, lk=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk)]


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_bf16_attention_matches_sdpa(mask):
    q, k, v = qkv(lq=12, lk=20)
    m = None
    if mask == "bool":
        m = torch.ones(2, 1, 12, 20, dtype=torch.bool)
        m[..., 15:] = False
    elif mask == "additive":
        m = torch.zeros(2, 1, 12, 20)
        m[..., 15:] = torch.finfo(torch.bfloat16).min
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3)
    m16 = m.bfloat16() if m is not None and m.is_floating_point() else m
    out, lse = compile_cpu.bf16_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=m16, scale=0.3)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max() < 0.05
    scores = (q.bfloat16() @ k.bfloat16().transpose(-1, -2)).float() * 0.3
    if m is not None:
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m16.float()
    torch.testing.assert_close(lse, scores.logsumexp(-1))


def test_bf16_attention_leaves_other_cases_to_the_flash_kernel():
    q, k, v = (t.bfloat16() for t in qkv())
    assert compile_cpu.bf16_attention(q.float(), k.float(), v.float()) is NotImplemented
    assert compile_cpu.bf16_attention(q, k, v, 0.1) is NotImplemented  # dropout
    assert compile_cpu.bf16_attention(q, k, v, is_causal=True) is NotImplemented
    long_q, long_k, long_v = (t.bfloat16() for t in qkv(b=1, h=1, lq=600, lk=600, d=4))
    assert compile_cpu.bf16_attention(long_q, long_k, long_v) is NotImplemented


class _Attn(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * 2.0


def test_int8_backend_compiles_bf16_attention_as_matmuls(matmul_attention_calls):
    calls = matmul_attention_calls
    q, k, v = (t.bfloat16() for t in qkv())
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    mask[..., 12:] = False
    model = _Attn()
    eager = model(q, k, v, mask)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=compile_cpu.int8_backend)
    with torch.inference_mode():
        out = compiled(q, k, v, mask)
    assert calls == [True]
    assert (out.float() - eager.float()).abs().max() < 0.1


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_int8_backend_attention_matches_eager_across_lengths(mask, matmul_attention_calls):
    """A second sequence length recompiles with dynamic shapes; both match eager for every mask kind."""
    model = _Attn()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=compile_cpu.int8_backend)
    for n in (16, 24):
        q, k, v = (t.bfloat16() for t in qkv(lq=n, lk=n, seed=n))
        m = None
        if mask == "bool":
            m = torch.ones(2, 1, n, n, dtype=torch.bool)
            m[1, ..., n - 5 :] = False
        elif mask == "additive":
            m = torch.zeros(2, 1, 1, n, dtype=torch.bfloat16)
            m[0, ..., :3] = -1e4
        with torch.inference_mode():
            out = compiled(q, k, v, m)
        ref = model(q.float(), k.float(), v.float(), m if m is None or m.dtype == torch.bool else m.float())
        assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.1
    assert matmul_attention_calls and all(matmul_attention_calls)


def test_int8_backend_softmax_is_one_pass_with_the_flash_kernels_exp(matmul_attention_calls):
    """The compiled attention stores no float32 scores tensor and uses exp_u20, as the flash kernel does."""
    from torch._inductor.utils import run_and_get_code

    q, k, v = (t.bfloat16() for t in qkv(b=2, h=3, lq=32, lk=32, d=8))
    mask = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    mask[1, ..., 20:] = False
    torch._dynamo.reset()
    compiled = torch.compile(_Attn(), backend=compile_cpu.int8_backend)
    with torch.inference_mode():
        out, (code,) = run_and_get_code(compiled, q, k, v, mask)
    assert matmul_attention_calls == [True]
    assert (out.float() - _Attn()(q.float(), k.float(), v.float(), mask)).abs().max() < 0.1
    assert ".exp_u20()" in code and ".exp()" not in code
    buffers = [  # (elements, dtype) of every buffer the compiled graph allocates
        (math.prod(int(n) for n in re.findall(r"\d+", shape)), dtype)
        for shape, dtype in re.findall(r"empty_strided_cpu\(\(([\d, ]*)\), \([\d, ]*\), torch\.(\w+)\)", code)
    ]
    scores = 2 * 3 * 32 * 32
    assert (scores, "bfloat16") in buffers  # Q Kᵀ (and the probabilities) in bf16
    assert not [b for b in buffers if b[1] == "float32" and b[0] >= scores], buffers  # no float32 scores


def test_compile_is_recorded_with_the_int8_backend_and_replayed():
    m = nn.Sequential(nn.Linear(8, 8))
    ts.compress_(m, Int8Dynamic(compile=True))
    ops = structure_ops(m)
    assert ops[-1] == {"op": "int8-compile", "data": {"dynamic": None, "backend": "int8"}}
    fresh = replay_ops(nn.Sequential(nn.Linear(8, 8)), ops)
    assert fresh._compiled_call_impl is not None  # compiled lazily, on the first call


def test_int8_backend_scopes_its_inductor_settings_to_its_own_compile(monkeypatch):
    import torch._inductor.compile_fx as cfx
    import torch._inductor.config as inductor_config
    from torch._inductor.codegen.cpp import CppVecOverrides

    seen = {}

    def fake(gm, inputs, decompositions=None, config_patches=None):
        seen.update(decompositions=decompositions, config_patches=config_patches)
        return gm

    monkeypatch.setattr(cfx, "compile_fx", fake)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    compile_cpu.int8_backend(torch.fx.symbolic_trace(nn.Linear(2, 2)), [torch.ones(1, 2)])
    assert seen["config_patches"] == {
        "realize_cpu_opcount_threshold": compile_cpu.REALIZE_OPCOUNT,
        "fx_graph_cache": False,
    }
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    assert seen["decompositions"][flash] is compile_cpu.bf16_attention
    assert inductor_config.realize_cpu_opcount_threshold == 50  # the global default is untouched
    assert CppVecOverrides.exp("x") == "x.exp()"  # the code generator's exp is restored
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    compile_cpu.int8_backend(torch.fx.symbolic_trace(nn.Linear(2, 2)), [torch.ones(1, 2)])
    assert flash not in seen["decompositions"]  # no native bf16: the flash kernel stays
