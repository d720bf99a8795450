"""A calibrated layer's Hessian costs about two K × K float64 sums while it accumulates and one K × K
float64 Hessian plus two or three float32 buffers while GPTQ solves: no whole-matrix temporaries (at K = 8704, an
MLP down projection of a 3 B model, each float64 copy is 600 MB; the sequential path's peak is set there).

Peaks are read from VmHWM after resetting it through ``/proc/self/clear_refs`` (Linux)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchslim.calibration.stats import collect_input_stats
from torchslim.quantization.int4.gptq import gptq_quantize

K = 3072
F64 = K * K * 8  # bytes of one K × K float64 matrix (72 MiB)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def _peak_added(fn):  # noqa: ANN001, ANN202 - runs fn, returns (result, bytes the peak rose above the start)
    lin = nn.Linear(256, 4)  # warm-up: the matmul library's own buffers are allocated on first use
    collect_input_stats(nn.Sequential(lin), {"0": lin}, [torch.randn(8, 256)] * 2, hessian=True)
    gptq_quantize(torch.randn(4, 256), torch.eye(256, dtype=torch.float64), 128)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status("VmRSS")
    out = fn()
    return out, _status("VmHWM") - base


pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="resets and reads the peak through /proc (Linux)"
)


def test_hessian_accumulation_holds_two_sums_and_no_product_copy() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(K, 8, bias=False)
    batches = [torch.randn(1, 64, K) for _ in range(2)]

    def collect() -> torch.Tensor:
        stats = collect_input_stats(nn.Sequential(lin), {"0": lin}, batches, hessian=True)["0"]
        return stats.hessian

    h, added = _peak_added(collect)
    # hi + lo of the compensated sum, bands of X Xᵀ (8 MiB) and the library's working memory (about 2.6
    # copies in all); the former code also held the whole X Xᵀ product, then the rounded sum beside both
    # halves, then 2·XXᵀ/T beside it (3.1 copies measured at K = 8704).
    assert added < 2.8 * F64, added / F64
    x = torch.cat([b.reshape(-1, K) for b in batches]).double()
    assert torch.allclose(h, 2.0 * (x.T @ x) / x.shape[0], rtol=1e-12, atol=1e-12)


def test_gptq_solve_adds_two_float32_buffers_beside_the_hessian() -> None:
    torch.manual_seed(0)
    x = torch.randn(K, 512, dtype=torch.float64)
    h = 2.0 * (x @ x.T) / x.shape[1]
    del x
    w = torch.randn(16, K)
    t, added = _peak_added(lambda: gptq_quantize(w, h, 128))
    # The permuted float32 Hessian and one factor buffer (each half a float64 copy) and LAPACK's working
    # copy (about 1.5 copies in all); the former code made the permuted float64 copy, a clone, the damped
    # copy, the identity and three factors (5.6 copies measured at K = 8704).
    assert added < 1.8 * F64, added / F64
    assert t.q.shape == (16, K) and int(t.q.max()) <= 15
