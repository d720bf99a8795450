"""The W4A8 kernel on many rows (prefill): passes of several rows per weight chunk, row blocks per thread.

Every compiled path against the torch reference at M = 2, 17, 64, 300 with odd N and odd group counts,
and each row of a many-row call bit-identical to the same row computed alone (the decode call), so that
prefill and decode agree exactly whatever the pass and block a row lands in.
"""

from __future__ import annotations

import pytest
import torch

from torchslim import kernels

# (out_features N, in_features K, group size): odd N, N below one tile, an odd number of groups.
SHAPES = [(37, 96, 32), (301, 208, 16), (129, 640, 128), (5, 192, 64)]
ROWS = [2, 17, 64, 300]  # one pass; passes with a remainder; one full row block; several blocks + remainder


def _random_packed(n: int, k: int, g: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(n, k // g, generator=gen) * 0.05 + 1e-3).bfloat16()
    zeros = (torch.randn(n, k // g, generator=gen) * 0.02).bfloat16()
    return kernels.pack_int4(codes, scales, zeros, g)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("n", "k", "g"), SHAPES)
def test_many_rows_match_the_reference_on_every_path(compiled: str, n: int, k: int, g: int, m: int) -> None:
    packed = _random_packed(n, k, g, seed=n * k + m)
    gen = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 4  # rows of different scales
    bias = torch.randn(n, generator=gen)
    ref = kernels.w4a8_linear_reference(x, packed, n, g, bias)
    tol = 1e-5 * float(ref.abs().max()) + 1e-6  # same integer sums; only the float order of groups differs
    for path in kernels.paths():
        y = kernels.w4a8_linear(x, packed, n, g, bias, path=path)
        assert y.shape == (m, n) and y.dtype == torch.float32
        torch.testing.assert_close(y, ref, rtol=0, atol=tol, msg=lambda s, p=path: f"path {p}: {s}")


@pytest.mark.parametrize(("n", "k", "g"), SHAPES[:2])
def test_each_row_of_a_prefill_equals_the_row_alone(compiled: str, n: int, k: int, g: int) -> None:
    packed = _random_packed(n, k, g, seed=7)
    x = torch.randn(300, k, generator=torch.Generator().manual_seed(1))
    for path in kernels.paths():
        if path == "reference":
            continue
        y = kernels.w4a8_linear(x, packed, n, g, path=path)
        for row in (0, 7, 8, 63, 64, 131, 299):  # first/last of passes and row blocks
            alone = kernels.w4a8_linear(x[row : row + 1], packed, n, g, path=path)
            assert torch.equal(y[row : row + 1], alone), f"path {path}, row {row}"


def test_bf16_prefill_and_leading_dims(compiled: str) -> None:
    packed = _random_packed(48, 256, 64, seed=3)
    x = torch.randn(3, 50, 256, generator=torch.Generator().manual_seed(2))
    y = kernels.w4a8_linear(x.bfloat16(), packed, 48, 64)
    ref = kernels.w4a8_linear_reference(x.bfloat16(), packed, 48, 64)
    assert y.shape == (3, 50, 48) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=0.01, atol=0.02)


@pytest.mark.parametrize("m", [1, 300])
def test_bf16_input_is_read_and_written_in_place_of_float_copies(compiled: str, m: int) -> None:
    # bf16 in -> bf16 out computed without float32 copies: equal to the float32 call rounded once to bf16.
    packed = _random_packed(37, 96, 32, seed=11)
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, 96, generator=gen).bfloat16()
    bias = torch.randn(37, generator=gen)
    for path in kernels.paths():
        if path == "reference":
            continue
        y = kernels.w4a8_linear(x, packed, 37, 32, bias, path=path)
        want = kernels.w4a8_linear(x.float(), packed, 37, 32, bias, path=path).bfloat16()
        assert y.dtype == torch.bfloat16 and torch.equal(y, want), f"path {path}"
