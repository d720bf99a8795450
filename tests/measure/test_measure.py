from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from tiny_nets import small_cnn

import torchslim as ts
from torchslim.measure import (
    count_macs,
    count_nonzero,
    count_params,
    interleaved_latency,
    measure,
    measure_latency,
    state_dict_bytes,
)
from torchslim.measure.report import Report, to_markdown


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


def test_exact_params_and_nonzero():
    m = mlp()
    assert count_params(m) == 10 * 20 + 20 + 20 * 5 + 5
    with torch.no_grad():
        m[0].weight[:, :5] = 0
    assert count_nonzero(m) == 325 - 100


def test_tied_params_counted_once():
    emb = nn.Embedding(7, 4)
    head = nn.Linear(4, 7, bias=False)
    head.weight = emb.weight
    m = nn.ModuleDict({"emb": emb, "head": head})
    assert count_params(m) == 28


def test_file_size_is_safetensors_bytes():
    m = nn.Linear(10, 20)  # 220 fp32 values = 880 bytes of data + a small header
    size = state_dict_bytes(m)
    assert 880 < size < 880 + 256
    m16 = nn.Linear(10, 20).to(torch.bfloat16)
    assert state_dict_bytes(m16) - 440 == size - 880 or state_dict_bytes(m16) < size - 400


def test_size_exact_known_model(tmp_path):
    from safetensors.torch import save_file

    m = mlp()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "m.safetensors"))
    assert state_dict_bytes(m) == (tmp_path / "m.safetensors").stat().st_size


def test_macs_linear_and_conv():
    x = torch.zeros(3, 10)
    assert count_macs(mlp(), (x,)) == 3 * (10 * 20 + 20 * 5)
    assert count_macs(mlp(), (x,), per_sample=True) == 10 * 20 + 20 * 5
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    assert count_macs(conv, (torch.zeros(1, 2, 8, 8),)) == 8 * 8 * 4 * 2 * 9


class _Sdpa(nn.Module):
    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)

    def forward(self, x, pad):
        return self.enc(x, src_key_padding_mask=pad)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_macs_count_the_fused_cpu_attention_kernels():
    # Each of these runs one fused kernel that PyTorch's counter scores as 0 MACs.
    q, k, v = torch.randn(3, 2, 4, 16, 8)  # the CPU flash kernel's shapes
    assert count_macs(_Sdpa(), (q, k, v)) == 2 * 4 * 16 * 16 * (8 + 8)  # Q·Kᵀ and P·V
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 6)
    assert count_macs(_Sdpa(), (q, k, v)) == 2 * 4 * 16 * 10 * (8 + 6)  # the math path (counted by PyTorch)
    x = torch.randn(2, 16, 32)
    per_sequence = 4 * 16 * 32 * 32 + 2 * 16 * 16 * 32  # q/k/v/out projections, Q·Kᵀ and P·V
    assert count_macs(_SelfAttention().eval(), (x,)) == 2 * per_sequence
    pad = torch.zeros(2, 16, dtype=torch.bool)
    ffn = 2 * 32 * 64  # per token
    assert count_macs(_Encoder().eval(), (x, pad)) == 2 * 2 * (per_sequence + 16 * ffn)
    pad[1, 8:] = True  # the fast path drops the padding: the second sequence has 8 tokens
    short = 4 * 8 * 32 * 32 + 2 * 8 * 8 * 32 + 8 * ffn
    assert count_macs(_Encoder().eval(), (x, pad)) == 2 * (per_sequence + 16 * ffn + short)


def test_latency_fields_and_order():
    lat = measure_latency(mlp(), (torch.zeros(2, 10),), warmup=1, runs=7)
    assert lat.runs == 7 and lat.threads == torch.get_num_threads() and lat.device == "cpu"
    assert 0 < lat.median_ms <= lat.p90_ms


def test_interleaved_latency_sees_the_slower_model():
    small = nn.Linear(16, 16)
    big = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    res = interleaved_latency(
        {"small": small, "big": big}, {"small": (torch.zeros(1, 16),), "big": (torch.zeros(64, 512),)}, rounds=5
    )
    assert res["big"].median_ms > res["small"].median_ms


def test_measure_with_context_and_restores_training_mode():
    m = mlp().train()
    calls = []

    def eval_fn(model: nn.Module) -> dict[str, float]:
        calls.append(model.training)
        return {"accuracy": 0.5}

    ctx = ts.Context(example_inputs=(torch.zeros(4, 10),), eval_fn=eval_fn)
    r = measure(m, ctx, latency_runs=3)
    assert m.training and calls == [False]
    assert r.params == 325 and r.macs == 300 and r.quality == {"accuracy": 0.5}
    assert r.latency_ms is not None and r.threads == torch.get_num_threads()
    bare = measure(m)
    assert bare.macs is None and bare.latency_ms is None and bare.quality == {}


def test_report_diff_and_round_trip():
    a = Report(params=100, nonzero=100, size_bytes=4000, macs=50, latency_ms=2.0, quality={"accuracy": 0.98})
    b = Report(params=50, nonzero=25, size_bytes=1000, macs=20, latency_ms=1.0, quality={"accuracy": 0.97})
    d = b.diff(a)
    assert d["size_ratio"] == 0.25 and d["speedup"] == 2.0 and d["nonzero_ratio"] == 0.25
    assert math.isclose(d["delta_accuracy"], -0.01)
    assert Report.from_dict(b.to_dict()) == b
    md = to_markdown([("base", a), ("small", b)])
    assert md.splitlines()[0].startswith("| model | params")
    assert "(4.0x)" in md and "2.00x" in md and "0.9700" in md


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measure_size_follows_dtype(dtype):
    m = mlp().to(dtype)
    assert measure(m).size_bytes == state_dict_bytes(m)


def test_macs_of_static_int8_layers_on_torchslims_kernels(monkeypatch) -> None:
    """A static int8 CNN counts the MACs of its float original, whichever kernel runs each layer: oneDNN, or
    torchslim's C++ 1×1 loop (directly or on im2col rows, as on CPUs with AMX tiles)."""
    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.kernels import qconv
    from torchslim.quantization.int8.static import Int8Static

    model = small_cnn()
    x = torch.randn(2, 3, 12, 12)
    want = count_macs(model, (x,))
    compress_(model, Int8Static(), ctx=Context(calibration=[(x,)]))
    assert count_macs(model, (x,)) == want  # whatever this CPU runs
    if qconv.vnni():  # as with AMX: both later layers on the C++ loop
        monkeypatch.setattr(qconv, "amx", lambda: True)
        assert count_macs(model, (x,)) == want
    depthwise = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 5, 2, 2, groups=16)).eval()
    want = count_macs(depthwise, (x,))
    compress_(depthwise, Int8Static(), ctx=Context(calibration=[(x,)]))
    assert count_macs(depthwise, (x,)) == want  # with AVX-512 VNNI: torchslim's depthwise loop
