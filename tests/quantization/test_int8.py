"""Int8 modules and the Int8Dynamic / Int8WeightOnly techniques: SQNR floors, round trips, replay, bad input."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load, save

import torchslim as ts
from torchslim.core.context import Context
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.quantization import Int8Dynamic, Int8DynamicLinear, Int8Embedding, Int8WeightOnly, Int8WeightOnlyLinear
from torchslim.quantization.common.sqnr import sqnr

LINEARS = [Int8DynamicLinear, Int8WeightOnlyLinear]
CONFIGS = [Int8Dynamic(), Int8WeightOnly(), Int8Dynamic(smoothquant=0.5, min_sqnr_db=20.0)]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 24), nn.LayerNorm(24)).eval()


def ids(batch: int = 4, seq: int = 9) -> torch.Tensor:
    return torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cls", LINEARS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 32), (5, 20, 30), (130, 384, 96)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_sqnr_floor_on_random_weights(cls, dtype, shape, bias):
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
    x = torch.randn(2, m, k, generator=g).to(dtype)
    q = cls.from_float(lin)
    y = q(x)
    assert y.dtype == dtype and y.shape == (2, m, n)
    assert sqnr(lin(x).float(), y.float()) >= 30


def test_embedding_sqnr_and_storage():
    emb = nn.Embedding(100, 16, padding_idx=0)
    q = Int8Embedding.from_float(emb)
    i = torch.arange(100).reshape(10, 10)
    assert sqnr(emb(i), q(i)) >= 30
    assert q.weight.dtype == torch.int8 and q.weight_scale.shape == (100,)
    assert torch.equal(q(torch.tensor([0])), torch.zeros(1, 16))  # the padding row stays exactly zero


def test_per_channel_handles_outlier_rows_that_ruin_per_tensor():
    # MiniLM's FFN-output weights have max/std ~ 175: per-channel scales keep every row accurate.
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 256, generator=g) * 0.02)
        lin.weight[3, 7] = 0.02 * 175
    x = torch.randn(32, 256, generator=g)
    assert sqnr(lin(x), Int8DynamicLinear.from_float(lin)(x)) >= 30


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.to_json())
def test_model_quality_size_and_state_dict_round_trip(config):
    m = net()
    x = ids()
    ref = m(x)
    ctx = Context(calibration=[(ids(2, 5),), (ids(3, 7),)])
    ts.compress_(m, config, ctx=ctx)
    assert isinstance(m[0], Int8Embedding) and m[1].torchslim_compressed
    assert sqnr(ref, m(x)) >= 30
    # Bit-exact round trip through safetensors into a model rebuilt by the structure replay.
    blob = save({k: v.contiguous() for k, v in m.state_dict().items()})
    fresh = replay_ops(net(), structure_ops(m))
    assert {k: (v.shape, v.dtype) for k, v in fresh.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in m.state_dict().items()
    }
    fresh.load_state_dict(load(blob), strict=True)
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert torch.equal(fresh(x), m(x))


def test_int8_is_four_times_smaller():
    m = nn.Sequential(nn.Embedding(1000, 128), nn.Linear(128, 256), nn.Linear(256, 128))
    before = ts.measure(m).size_bytes
    ts.compress_(m, Int8WeightOnly())
    assert ts.measure(m).size_bytes < 0.27 * before


def test_compressed_modules_are_skipped_by_later_steps():
    m = net()
    ts.compress_(m, Int8WeightOnly())
    first = m[1]
    ts.compress_(m, Int8Dynamic())
    assert m[1] is first
    assert [o["op"] for o in structure_ops(m)].count("int8-modules") == 2  # linears + embeddings, once


def test_select_restricts_the_swap_and_embeddings_flag():
    m = net()
    ts.compress_(m, Int8Dynamic(embeddings=False), select=ts.Select(types=("Linear", "Embedding"), exclude=(r"^3$",)))
    assert isinstance(m[0], nn.Embedding) and isinstance(m[1], Int8DynamicLinear) and type(m[3]) is nn.Linear


def test_multihead_attention_is_split_and_its_projections_quantized():
    torch.manual_seed(0)
    m = nn.ModuleDict({"mha": nn.MultiheadAttention(16, 2, batch_first=True), "head": nn.Linear(16, 4)}).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = m["mha"](x, x, x)[0]
    ctx = Context()
    ts.compress_(m, Int8Dynamic(), ctx=ctx)
    assert isinstance(m["head"], Int8DynamicLinear) and type(m["mha"].out_proj) is Int8DynamicLinear
    assert type(m["mha"].q_proj) is Int8DynamicLinear  # nn.MultiheadAttention never calls out_proj: split first
    assert any("mha" in e and "rewritten" in e for e in ctx.events)
    with torch.no_grad():
        out = m["mha"](x, x, x)[0]
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("config", [Int8Dynamic(), Int8WeightOnly()], ids=lambda c: c.kind)
def test_nan_weights_are_refused_naming_the_layer(config):
    m = net()
    with torch.no_grad():
        m[3].weight[0, 0] = float("nan")
    with pytest.raises(UnsupportedModelError, match="'3'"):
        ts.compress_(m, config)


@pytest.mark.parametrize(
    "batch",
    [torch.zeros(2, 5, dtype=torch.long), torch.full((3, 4), 7, dtype=torch.long), torch.tensor([[3]])],
    ids=["zeros", "constant", "single-sample"],
)
@pytest.mark.parametrize("config", [Int8Dynamic(smoothquant=0.5, min_sqnr_db=20.0), Int8WeightOnly(min_sqnr_db=20.0)])
def test_degenerate_calibration_gives_finite_weights(batch, config):
    m = net()
    ts.compress_(m, config, ctx=Context(calibration=[(batch,)]))
    for name, t in m.state_dict().items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name
    assert torch.isfinite(m(ids())).all()


def test_nan_calibration_raises_config_error_naming_the_layer():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    bad = torch.ones(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(ConfigError, match="'0'.*NaN"):
        ts.compress_(m, Int8Dynamic(smoothquant=0.5), ctx=Context(calibration=[bad]))
    with pytest.raises(ConfigError, match="calibration"):
        ts.compress_(m, Int8Dynamic(min_sqnr_db=30.0))  # no calibration given
    assert type(m[0]) is nn.Linear  # nothing half-done


def hurt_model() -> tuple[nn.Module, torch.Tensor]:
    m = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(64, 64, generator=g))
        m[0].weight[:, 5] = 0.0  # the output ignores channel 5 ...
    cal = torch.randn(16, 64, generator=g)
    cal[:, 5] = 1e4  # ... which dwarfs the rest: per-token int8 rounds every other channel to 0
    return m, cal


def test_sqnr_guard_keeps_a_hurt_layer_in_bf16_and_reports_it():
    m, cal = hurt_model()
    ctx = Context(calibration=[cal])
    ts.compress_(m, Int8Dynamic(min_sqnr_db=35.0), ctx=ctx)
    assert type(m[0]) is nn.Linear and m[0].weight.dtype == torch.bfloat16
    assert isinstance(m[1], Int8DynamicLinear)
    assert any(e.startswith("int8-dynamic: 0 kept in bfloat16") for e in ctx.events)
    assert [o["op"] for o in structure_ops(m)] == ["int8-modules", "cast-dtype"]


def test_sqnr_guard_float32_fallback_and_alpha_search():
    m, cal = hurt_model()
    ctx = Context(calibration=[cal])
    ts.compress_(m, Int8Dynamic(smoothquant="search", min_sqnr_db=30.0, fallback="float32"), ctx=ctx)
    # SmoothQuant moves channel 5's range into the (zero) weight column: int8 is fine after all.
    assert isinstance(m[0], Int8DynamicLinear) and m[0].smooth is not None
    m, cal = hurt_model()
    ctx = Context(calibration=[cal])
    ts.compress_(m, Int8Dynamic(min_sqnr_db=35.0, fallback="float32"), ctx=ctx)
    assert type(m[0]) is nn.Linear and m[0].weight.dtype == torch.float32
    assert any("0 kept in float32" in e for e in ctx.events)
    assert [o["op"] for o in structure_ops(m)] == ["int8-modules"]


def test_smoothquant_improves_sqnr_with_outlier_channels():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(128, 64)
    x = torch.randn(256, 128, generator=g)
    x[:, :4] *= 60  # a few outlier channels, as in transformer activations
    plain = sqnr(lin(x), Int8DynamicLinear.from_float(lin)(x))
    m = nn.Sequential(lin)
    ts.compress_(m, Int8Dynamic(smoothquant=0.5), ctx=Context(calibration=[x[:64]]))
    assert m[0].smooth is not None
    assert sqnr(lin(x), m[0](x)) > plain + 3


@pytest.mark.parametrize(
    "bad",
    [
        {"smoothquant": 1.5},
        {"smoothquant": "auto"},
        {"min_sqnr_db": -1.0},
        {"compile": "yes"},
        {"typo": 1},
        {"compute_dtype": "float16"},
    ],
)
def test_config_validation_and_json_round_trip(bad):
    for cfg in (Int8Dynamic(smoothquant=0.5, compile=True), Int8Dynamic(smoothquant="search", fallback="float32")):
        assert ts.config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        ts.config_from_dict({"kind": "int8-dynamic", **bad})


def test_bf16_compute_dtype_runs_the_float_layers_in_bf16_and_reloads(tmp_path):
    m, x = net(), ids()
    ref = m(x)
    ts.compress_(m, Int8Dynamic(compute_dtype="bfloat16"))
    assert isinstance(m[0], Int8Embedding) and m[0].output_dtype == torch.bfloat16
    assert m[4].weight.dtype == torch.bfloat16  # LayerNorm: the float remainder
    assert m[1].weight_scale.dtype == torch.float32  # int8 layers keep their float32 scales
    seen = []
    m[1].register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    y = m(x)
    assert seen == [(torch.bfloat16, torch.bfloat16)] and y.dtype == torch.float32
    assert sqnr(ref, y) > 25
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=net)
    assert back[0].output_dtype == torch.bfloat16 and torch.equal(back(x), y)


def test_int_mm_pads_odd_shapes():
    from torchslim.quantization.int8.modules import int_mm

    a = torch.randint(-127, 128, (3, 5), dtype=torch.int8)
    b = torch.randint(-127, 128, (5, 7), dtype=torch.int8)
    assert torch.equal(int_mm(a, b), (a.int() @ b.int()))


@pytest.mark.skipif(not os.environ.get("TORCHSLIM_SLOW"), reason="compiles a model (~30 s); set TORCHSLIM_SLOW=1")
def test_compile_flag_keeps_outputs_and_replays():
    m = net()
    x = ids()
    ts.compress_(m, Int8Dynamic())
    eager = m(x)
    fresh = replay_ops(net(), structure_ops(m))
    fresh.load_state_dict(m.state_dict())
    ts.compress_(fresh, Int8Dynamic(compile=True))  # nothing left to quantize: only compiles
    torch.testing.assert_close(fresh(x), eager, atol=1e-2, rtol=1e-2)
    assert "int8-compile" in [o["op"] for o in structure_ops(fresh)]


def test_buffers_save_with_torch_save_weights_only():
    m = net()
    ts.compress_(m, Int8Dynamic())
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["1.weight"].dtype == torch.int8
