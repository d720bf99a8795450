"""Packed (upper-triangle) Hessians: the same entries, permutations and GPTQ codes as the full matrix."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.calibration.packed import SymmetricPacked, packed_size, row_offsets
from torchslim.calibration.stats import collect_input_stats
from torchslim.quantization.int4.gptq import gptq_quantize


def _symmetric(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, 3 * k, generator=g, dtype=torch.float64)
    return x @ x.T / x.shape[1]


def test_layout_row_by_row_upper_triangle() -> None:
    k = 5
    m = torch.arange(k * k, dtype=torch.float64).reshape(k, k)
    p = SymmetricPacked.from_full(m)
    assert p.data.numel() == packed_size(k) == 15
    offsets = row_offsets(torch.arange(k), k).tolist()
    assert offsets == [0, 5, 9, 12, 14]
    for i in range(k):
        assert p.data[offsets[i] : offsets[i] + k - i].tolist() == m[i, i:].tolist()


@pytest.mark.parametrize("k", [1, 7, 300])
def test_full_permuted_and_diagonal_match_the_full_matrix(k: int) -> None:
    h = _symmetric(k)
    p = SymmetricPacked.from_full(h)
    upper = torch.triu(h)
    sym = upper + torch.triu(h, 1).T  # the matrix the upper triangle describes
    assert torch.equal(p.full(), sym)
    assert torch.equal(p.diagonal(), torch.diagonal(h))
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1))
    assert torch.equal(p.permuted(perm, torch.float32), sym[perm][:, perm].to(torch.float32))


def test_released_matrix_refuses_reads() -> None:
    p = SymmetricPacked.from_full(_symmetric(4))
    p.release()
    with pytest.raises(ValueError, match="released"):
        p.full()


def test_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="upper triangle"):
        SymmetricPacked(torch.zeros(5), 3)


def _stats(seed: int = 0):  # noqa: ANN202 - InputStats of one Linear over two batches
    torch.manual_seed(seed)
    lin = nn.Linear(256, 4, bias=False)
    batches = [torch.randn(2, 40, 256) for _ in range(2)]
    return collect_input_stats(nn.Sequential(lin), {"0": lin}, batches, hessian=True)["0"]


def test_packed_hessian_has_the_bits_of_the_full_one_and_is_handed_over() -> None:
    full = _stats().hessian
    stats = _stats()
    packed = stats.packed_hessian()
    assert stats.xxt is None  # handed over: releasing it frees the memory
    assert torch.equal(packed.full(), full)
    again = _stats()
    _ = again.hessian
    assert torch.equal(again.packed_hessian().full(), full)  # packed again from the full matrix


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_codes_from_packed_equal_codes_from_full(act_order: bool) -> None:
    full = _stats().hessian
    packed = _stats().packed_hessian()
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    b = gptq_quantize(w.bfloat16().float(), full, 64, act_order=act_order)
    c = gptq_quantize(w.bfloat16(), packed, 64, act_order=act_order)  # bf16 weight: converted band by band
    assert packed.data is None
    assert torch.equal(b.q, c.q) and torch.equal(b.scale, c.scale) and torch.equal(b.zero, c.zero)
