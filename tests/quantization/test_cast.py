from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import ConfigError


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cast_halves_size_and_keeps_float32_interface(dtype):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    ref = m(x)
    before = ts.measure(m).size_bytes
    ts.compress_(m, ts.CastDtype(dtype))
    out = m(x)
    assert out.dtype == torch.float32
    assert m[0].weight.dtype == getattr(torch, dtype)
    assert ts.measure(m).size_bytes < 0.55 * before
    # bf16 keeps 8 bits of mantissa: outputs within a percent-level relative error
    assert (out - ref).norm() / ref.norm() < 0.02


def test_cast_respects_select_and_bad_dtype():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    ts.compress_(m, ts.CastDtype("bfloat16"), select=ts.Select(include=("^0$",)))
    assert m[0].weight.dtype == torch.bfloat16 and m[1].weight.dtype == torch.float32
    assert m(torch.ones(2, 4)).dtype == torch.float32
    with pytest.raises(ConfigError):
        ts.CastDtype("int3")  # type: ignore[arg-type]
