"""The W4A8 int4 path: ``Int4WeightOnly(activations="int8")`` -> ``Int4W4A8Linear`` on torchslim's kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim import kernels
from torchslim.errors import ConfigError
from torchslim.quantization import Int4W4A8Linear, Int4WeightOnly, Int4WeightOnlyLinear
from torchslim.recipes import load_recipe


def _linear(n: int, k: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _int8_rows(x: torch.Tensor) -> torch.Tensor:
    # the activations the kernel multiplies: int8 per row, back in float
    codes, scale = kernels.quantize_rows(x)
    return codes.float() * scale[:, None]


@pytest.mark.parametrize(
    ("n", "k", "group"), [(37, 96, 32), (51, 192, 64), (16, 256, 128), (129, 128, 128), (3, 64, 32)]
)
def test_decode_rows_match_the_float_product_of_int8_rows_and_the_int4_weight(n, k, group) -> None:
    lin = _linear(n, k, seed=n + k)
    mod = Int4W4A8Linear.from_float(lin, group_size=group)
    w = mod.dequantized_weight()
    gen = torch.Generator().manual_seed(group)
    for m in (1, 2, 3, 5, 8, 16):
        x = torch.randn(m, k, generator=gen)
        with torch.no_grad():
            y = mod(x)
        want = _int8_rows(x) @ w.t() + lin.bias.detach()
        assert y.shape == (m, n) and y.dtype == torch.float32
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        # and close to the unquantized product (int8 activations lose little)
        exact = x @ lin.weight.detach().t() + lin.bias.detach()
        assert float((y - exact).norm() / exact.norm()) < 0.15


def test_decode_rows_equal_the_torch_reference_and_keep_batch_dims_and_bf16() -> None:
    lin = _linear(40, 128, seed=3)
    mod = Int4W4A8Linear.from_float(lin, group_size=64)
    x = torch.randn(2, 3, 128)
    with torch.no_grad():
        y = mod(x)
        yb = mod(x.bfloat16())
    ref = kernels.w4a8_linear_reference(x, mod.packed, 40, 64, mod.bias)
    assert y.shape == (2, 3, 40) and yb.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yb.float(), ref, rtol=0.02, atol=0.05)


@pytest.mark.parametrize("m", [17, 64, 300])
def test_prefill_rows_take_the_int8_kernel_like_decode_rows(m: int) -> None:
    # Prefill (many rows) runs the same W4A8 product as decode: int8 activations per token, no bf16 GEMM.
    lin = _linear(48, 128, seed=5)
    mod = Int4W4A8Linear.from_float(lin, group_size=32)
    x = torch.randn(m, 128, generator=torch.Generator().manual_seed(m))
    with torch.no_grad():
        y = mod(x)
    ref = kernels.w4a8_linear_reference(x, mod.packed, 48, 32, mod.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    bf16_gemm = torch.nn.functional.linear(x.bfloat16(), kernels.dequantize(mod.packed, 48, 32).bfloat16()).float()
    assert not torch.equal(y, bf16_gemm + lin.bias.detach())
    # each row equals that row computed alone (the decode path)
    with torch.no_grad():
        torch.testing.assert_close(mod(x[m // 2 : m // 2 + 1]), y[m // 2 : m // 2 + 1], rtol=1e-6, atol=1e-6)


def test_same_codes_as_the_w4a16_module_and_layout_round_trip() -> None:
    lin = _linear(33, 256, seed=7)
    a = Int4W4A8Linear.from_float(lin, group_size=128)
    b = Int4WeightOnlyLinear.from_float(lin, group_size=128)
    codes, scales, zeros = kernels.unpack_int4(a.packed, 33, 128)
    assert torch.equal(codes, b.codes()) and torch.equal(scales, b.scales) and torch.equal(zeros, b.zeros)
    assert torch.equal(a.dequantized_weight(), b.dequantized_weight())


def test_config_builds_w4a8_modules_with_gptq_and_refuses_bad_activations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16)).eval()
    calib = [torch.randn(32, 64)]
    x = torch.randn(4, 64)
    with torch.no_grad():
        ref = model(x)
    cfg = Int4WeightOnly(group_size=32, method="gptq", activations="int8", progress=False)
    ts.compress_(model, cfg, ctx=ts.Context(calibration=calib), select=ts.Select(include=(r"^0$",)))
    assert isinstance(model[0], Int4W4A8Linear) and isinstance(model[2], nn.Linear)
    with torch.no_grad():
        assert float((model(x) - ref).norm() / ref.norm()) < 0.2
    with pytest.raises(ConfigError, match="activations"):
        Int4WeightOnly(activations="fp8")


def test_recipe_int4_w4a8_g128_is_gptq_with_int8_activations() -> None:
    (step,) = load_recipe("int4-w4a8-g128").steps
    cfg = step.config
    assert isinstance(cfg, Int4WeightOnly)
    assert (cfg.group_size, cfg.method, cfg.activations) == (128, "gptq", "int8")


_CHILD = textwrap.dedent(
    """
    import sys, torch, torch.nn as nn
    import torchslim as ts
    from torchslim import kernels

    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(128, 40), nn.GELU(), nn.Linear(40, 24)).eval()

    model = ts.load(sys.argv[1], factory=factory)
    torch.save({"state": model.state_dict(), "y": model(torch.load(sys.argv[2]))}, sys.argv[3])
    print(kernels.backend())
    """
)


@pytest.mark.parametrize("kernels_env", ["", "reference"])
def test_saved_kernel_layout_loads_bit_identically_in_a_fresh_process(tmp_path, kernels_env) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 40), nn.GELU(), nn.Linear(40, 24)).eval()
    ts.compress_(model, Int4WeightOnly(group_size=32, method="rtn", activations="int8", progress=False))
    x = torch.randn(3, 128)
    with torch.no_grad():
        y = model(x)
    ts.save(model, tmp_path / "art")
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "TORCHSLIM_KERNELS"}
    if kernels_env:  # a machine whose kernel cannot run: the torch reference computes the same sums
        env["TORCHSLIM_KERNELS"] = kernels_env
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "art"), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = torch.load(tmp_path / "out.pt")
    for name, t in model.state_dict().items():
        assert torch.equal(got["state"][name], t), name  # the packed layout as stored, byte for byte
    assert isinstance(model[0], Int4W4A8Linear)
    if kernels_env == "reference":
        assert out.stdout.strip().endswith("torch-reference")
        torch.testing.assert_close(got["y"], y, rtol=1e-5, atol=1e-5)  # same sums, other summation order
    else:
        assert torch.equal(got["y"], y)


_COMPILE_CHILD = textwrap.dedent(
    """
    import torch, torch.nn as nn
    import torchslim as ts
    from torchslim import kernels
    from torchslim.quantization import Int4WeightOnly
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32)).eval()
    ts.compress_(model, Int4WeightOnly(group_size=32, method="rtn", activations="int8", progress=False))
    assert kernels.backend() is None  # nothing has run the kernel in this process yet
    x = torch.randn(2, 128)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        compiled = torch.compile(model)(x)
        eager = model(x)
    print(explained.graph_break_count, kernels.backend() is not None, float((compiled - eager).abs().max()))
    """
)


def test_compiling_before_the_first_kernel_call_traces_one_graph() -> None:
    # The kernels load on first use; tracing a model before then must not break the graph at each layer.
    out = subprocess.run([sys.executable, "-c", _COMPILE_CHILD], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    breaks, loaded, diff = out.stdout.split()[-3:]
    assert breaks == "0" and loaded == "True" and float(diff) < 1e-4
