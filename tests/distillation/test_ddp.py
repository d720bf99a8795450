"""Two DDP processes (gloo, 127.0.0.1) give the loss of one process: the global batch is the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multiproc import load_worker, needs_gloo, torchrun

WORKER = Path(__file__).with_name("ddp_worker.py")


@needs_gloo
def test_two_processes_match_a_single_process_run(tmp_path) -> None:
    single = load_worker(WORKER, "ddp_worker").run()
    out = tmp_path / "ddp.json"
    proc = torchrun([str(WORKER), str(out)], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    for mode in ("dataset", "callable"):  # DistributedSampler, and per-batch sharding of a callable
        assert len(ddp[mode]["losses"]) == len(single[mode]["losses"]) == 16
        # Same global batches, gradients averaged over processes: equal up to float summation order.
        assert ddp[mode]["losses"] == pytest.approx(single[mode]["losses"], rel=1e-4, abs=1e-6)
        for a, b in zip(ddp[mode]["weights"], single[mode]["weights"], strict=True):
            assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
