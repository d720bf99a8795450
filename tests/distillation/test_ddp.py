"""Two DDP processes (gloo, 127.0.0.1) give the loss of one process: the global batch is the same."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

WORKER = Path(__file__).with_name("ddp_worker.py")


def _worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_processes_match_a_single_process_run(tmp_path) -> None:
    single = _worker().run()
    out = tmp_path / "ddp.json"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    for mode in ("dataset", "callable"):  # DistributedSampler, and per-batch sharding of a callable
        assert len(ddp[mode]["losses"]) == len(single[mode]["losses"]) == 16
        # Same global batches, gradients averaged over processes: equal up to float summation order.
        assert ddp[mode]["losses"] == pytest.approx(single[mode]["losses"], rel=1e-4, abs=1e-6)
        for a, b in zip(ddp[mode]["weights"], single[mode]["weights"], strict=True):
            assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
