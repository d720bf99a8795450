"""The W4A8 kernel (torchslim.kernels) against its torch reference and the float matmul; the packed
layout's round trip; the fallback path; tracing through the fake implementation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchslim import kernels

REPO = Path(__file__).resolve().parents[2]

# (out_features N, in_features K, group size, rows M): odd N, N not a multiple of 16, one-tile and
# many-tile weights, group sizes 32/64/128 (and 16, 48), batch 1..16 (the VNNI loop takes rows in passes of 4).
SHAPES = [
    (1, 32, 32, 1),
    (37, 96, 32, 3),
    (100, 256, 64, 16),
    (64, 384, 128, 1),
    (129, 512, 128, 7),
    (255, 640, 64, 2),
    (48, 1024, 128, 16),
    (301, 192, 32, 5),
    (23, 96, 16, 4),  # other multiples of 16 work too
    (40, 192, 48, 9),
]


def _random_packed(n: int, k: int, g: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(n, k // g, generator=gen) * 0.05 + 1e-3).bfloat16()
    zeros = (torch.randn(n, k // g, generator=gen) * 0.02).bfloat16()
    return kernels.pack_int4(codes, scales, zeros, g), codes, scales, zeros


def _rtn_int4(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest int4 in the layout's convention ŵ = (q − 8)·s + z (test-local)."""
    n, k = w.shape
    wg = w.view(n, k // g, g)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scales = ((hi - lo) / 15).clamp_min(1e-8).bfloat16()
    zeros = (lo + 8 * scales.float()).bfloat16()
    q = ((wg - zeros.float()[..., None]) / scales.float()[..., None] + 8).round().clamp(0, 15)
    return q.view(n, k).to(torch.uint8), scales, zeros


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("n", "k", "g", "m"), SHAPES)
def test_pack_unpack_round_trip_is_exact(n: int, k: int, g: int, m: int) -> None:
    packed, codes, scales, zeros = _random_packed(n, k, g, seed=n + k)
    assert packed.shape == kernels.packed_shape(n, k, g)
    c, s, z = kernels.unpack_int4(packed, n, g)
    assert torch.equal(c, codes) and torch.equal(s, scales) and torch.equal(z, zeros)
    assert torch.equal(kernels.pack_int4(c, s, z, g), packed)


def test_pack_refuses_bad_inputs() -> None:
    codes = torch.zeros(4, 64, dtype=torch.uint8)
    s = torch.ones(4, 2, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 16"):
        kernels.pack_int4(codes, s, s, 24)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        kernels.pack_int4(codes, torch.ones(4, 1), torch.ones(4, 1), 48)
    with pytest.raises(ValueError, match=r"0\.\.15"):
        kernels.pack_int4(codes + 16, s, s, 32)
    with pytest.raises(ValueError, match="must be"):
        kernels.pack_int4(codes, s[:, :1], s, 32)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.unpack_int4(kernels.pack_int4(codes, s, s, 32), 17, 32)


@pytest.mark.parametrize(("n", "k", "g", "m"), SHAPES)
def test_kernel_matches_the_reference(compiled: str, n: int, k: int, g: int, m: int) -> None:
    packed, *_ = _random_packed(n, k, g, seed=3 * n + m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    ref = kernels.w4a8_linear_reference(x, packed, n, g)
    tol = 1e-5 * float(ref.abs().max()) + 1e-6  # same integer sums; only the float order of groups differs
    for path in kernels.paths():
        y = kernels.w4a8_linear(x, packed, n, g, path=path)
        assert y.shape == (m, n) and y.dtype == torch.float32
        torch.testing.assert_close(y, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("g", [32, 48, 128])
def test_largest_integer_sums_are_exact_on_every_path(compiled: str, g: int) -> None:
    # Every code 15 against activations all +127 or all -127: the largest partial sums any path holds
    # (the AVX2 loop keeps several chunks in 16 bits before widening). w = (15 - 8) * 1 + 0 = 7 everywhere.
    n, k = 40, 8 * g
    packed = kernels.pack_int4(
        torch.full((n, k), 15, dtype=torch.uint8), torch.ones(n, k // g), torch.zeros(n, k // g), g
    )
    for rows in (1, 3, 8):
        x = torch.ones(rows, k)
        x[1::2] = -1
        expected = 7.0 * k * x[:, :1].expand(rows, n)
        for path in kernels.paths():
            assert torch.equal(kernels.w4a8_linear(x, packed, n, g, path=path), expected), path


def test_kernel_is_close_to_the_float_matmul(compiled: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, k, g = 200, 1024, 64
    w, x = torch.randn(n, k, generator=gen), torch.randn(4, k, generator=gen)
    packed = kernels.pack_int4(*_rtn_int4(w, g), g)
    y = kernels.w4a8_linear(x, packed, n, g)
    w_hat = kernels.dequantize(packed, n, g)
    # Activation quantization alone (8 bits per token) costs well under 1%; int4 weights about 10%.
    assert _rel_err(y, x @ w_hat.t()) < 0.01
    assert _rel_err(y, x @ w.t()) < 0.15


def test_bias_leading_dims_and_bf16(compiled: str) -> None:
    n, k, g = 40, 256, 128
    packed, *_ = _random_packed(n, k, g, seed=1)
    x = torch.randn(2, 3, k)
    bias = torch.randn(n)
    y = kernels.w4a8_linear(x, packed, n, g, bias)
    assert y.shape == (2, 3, n)
    torch.testing.assert_close(y, kernels.w4a8_linear_reference(x, packed, n, g, bias), rtol=1e-5, atol=1e-5)
    yb = kernels.w4a8_linear(x.bfloat16(), packed, n, g)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, kernels.w4a8_linear_reference(x.bfloat16(), packed, n, g))


def test_zero_rows_and_zero_input(compiled: str) -> None:
    packed, *_ = _random_packed(20, 64, 32, seed=2)
    assert kernels.w4a8_linear(torch.empty(0, 64), packed, 20, 32).shape == (0, 20)
    assert torch.equal(kernels.w4a8_linear(torch.zeros(1, 64), packed, 20, 32), torch.zeros(1, 20))


def test_shape_mismatch_is_refused(compiled: str) -> None:
    packed, *_ = _random_packed(20, 64, 32, seed=2)
    with pytest.raises(RuntimeError, match="features"):
        kernels.w4a8_linear(torch.randn(1, 32), packed, 20, 32)
    with pytest.raises(RuntimeError, match="out_features"):
        kernels.w4a8_linear(torch.randn(1, 64), packed, 40, 32)
    with pytest.raises(ValueError, match="path"):
        kernels.w4a8_linear(torch.randn(1, 64), packed, 20, 32, path="fast")
    with pytest.raises(RuntimeError, match="unknown isa"):
        torch.ops.torchslim.w4a8_linear_on(torch.randn(1, 64), packed, 20, 32, None, "sse9")


def test_fake_implementation_traces(compiled: str) -> None:
    packed, *_ = _random_packed(48, 128, 64, seed=4)
    x3 = torch.randn(3, 128)
    torch.library.opcheck(torch.ops.torchslim.w4a8_linear.default, (x3, packed, 48, 64, None))
    torch.library.opcheck(torch.ops.torchslim.w4a8_linear_on.default, (x3, packed, 48, 64, None, "portable"))

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("packed", packed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.torchslim.w4a8_linear(x, self.packed, 48, 64)

    x = torch.randn(2, 128)
    ep = torch.export.export(Tiny(), (x,))
    assert "torchslim.w4a8_linear" in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), Tiny()(x))


@pytest.mark.slow  # a fresh interpreter imports torchslim: about 10 s
def test_forced_reference_fallback_gives_the_same_results(tmp_path: Path) -> None:
    # A fresh interpreter: the backend is chosen once per process, at the first call.
    code = (
        "import torch\n"
        "from torchslim import kernels\n"
        "c = torch.randint(0, 16, (33, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)\n"
        "p = kernels.pack_int4(c, torch.full((33, 2), 0.02).bfloat16(), torch.zeros(33, 2).bfloat16(), 64)\n"
        "x = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))\n"
        "y = kernels.w4a8_linear(x, p, 33, 64)\n"
        "assert kernels.backend() == 'torch-reference' and not kernels.available(), kernels.backend()\n"
        "torch.testing.assert_close(y, kernels.w4a8_linear(x, p, 33, 64, path='avx2'))\n"
        "torch.save(y, __import__('sys').argv[1])\n"
    )
    out = tmp_path / "y.pt"
    env = {**os.environ, "TORCHSLIM_KERNELS": "reference"}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=REPO, timeout=120)
    y = torch.load(out)
    c = torch.randint(0, 16, (33, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    p = kernels.pack_int4(c, torch.full((33, 2), 0.02).bfloat16(), torch.zeros(33, 2).bfloat16(), 64)
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    ref = kernels.w4a8_linear_reference(x, p, 33, 64)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


@pytest.mark.slow  # a fresh interpreter imports torchslim: about 10 s
@pytest.mark.skipif(sys.platform == "win32", reason="the failing compiler stand-in is a POSIX shell script")
def test_a_failed_build_falls_back_to_the_reference(tmp_path: Path) -> None:
    cxx = tmp_path / "failing-c++"
    cxx.write_text("#!/bin/sh\nexit 1\n")
    cxx.chmod(0o755)
    code = (
        "import torch\n"
        "from torchslim import kernels\n"
        "c = torch.randint(0, 16, (16, 128), dtype=torch.uint8)\n"
        "p = kernels.pack_int4(c, torch.full((16, 1), 0.1).bfloat16(), torch.zeros(16, 1).bfloat16(), 128)\n"
        "x = torch.randn(3, 128)\n"
        "torch.testing.assert_close(kernels.w4a8_linear(x, p, 16, 128), kernels.w4a8_linear_reference(x, p, 16, 128))\n"
        "assert kernels.backend() == 'torch-reference', kernels.backend()\n"
    )
    env = {**os.environ, "CXX": str(cxx), "TORCHSLIM_CACHE": str(tmp_path / "cache")}
    env.pop("TORCHSLIM_KERNELS", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, timeout=120, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "could not be built" in done.stderr
