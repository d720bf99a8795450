from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from torchslim.bench import Variant, run_benchmark, run_named_benchmark
from torchslim.errors import UsageError


def test_schema_and_speedup_against_fp32(tmp_path):
    x = (torch.randn(32, 256),)
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(6)]).eval()
    small = nn.Linear(256, 256).eval()
    res = run_benchmark(
        "toy",
        [
            Variant("fp32", big, x, size_bytes=2_000_000, quality={"acc": 1.0}),
            Variant("torchslim-small", small, x, size_bytes=500_000, quality=lambda: {"acc": 0.5}, extra={"macs": 7}),
        ],
        rounds=7,
        warmup=1,
    )
    res.write_json(tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["benchmark"] == "toy" and data["torch"] == torch.__version__ and data["device"] == "cpu"
    fp32, small_row = data["rows"]
    assert fp32["variant"] == "fp32" and fp32["speedup"] == 1.0 and fp32["size_mb"] == 2.0
    assert small_row["speedup"] == pytest.approx(fp32["latency_ms"] / small_row["latency_ms"])
    assert small_row["speedup"] > 1.0  # 6 layers vs 1
    assert small_row["quality"] == {"acc": 0.5} and small_row["macs"] == 7
    assert "torchslim-small" in res.to_markdown()


def test_names_and_baseline_are_checked():
    with pytest.raises(ValueError, match="must be 'fp32' or start with"):
        Variant("mine", nn.Identity(), ())
    with pytest.raises(ValueError, match="fp32"):
        run_benchmark("t", [Variant("peer-x", nn.Identity(), (torch.zeros(1),))], rounds=1)
    with pytest.raises(UsageError, match="digits"):
        run_named_benchmark("nope")
