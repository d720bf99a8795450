"""Worker for ``test_ddp.py``: distil a small MLP on synthetic data; rank 0 writes the run as JSON.

Run by ``torchrun --nproc_per_node 2 ddp_worker.py OUT.json`` and in-process (one process) by the test.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from torchslim.distillation import DistillConfig, LossTerm, train_distill
from torchslim.distillation.distributed import init_from_env

# kd + ce + a hidden-feature term whose widths differ (8 vs 32): exercises the projection under DDP.
CONFIG = DistillConfig(
    epochs=2,
    batch_size=32,
    lr=1e-2,
    terms=(LossTerm("kd", 0.5), LossTerm("ce", 0.5), LossTerm("mse", 0.1, student="1", teacher="1")),
)


def build(student_class: Callable[[], nn.Module] | None = None) -> tuple[nn.Module, nn.Module, TensorDataset]:
    """Seeded student (``student_class()`` if given), teacher and data (no BatchNorm or dropout: per-process
    statistics would differ)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = (x[:, :4].sum(1) > 0).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
        student = student_class() if student_class else nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    return student, teacher, TensorDataset(x, y)


def batches(data: TensorDataset):
    """The same samples as a callable of ready-made, seeded batches (each process keeps its half of each)."""
    x, y = data.tensors
    calls = iter(range(10**9))

    def make():
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(next(calls)))
        return [(x[order[i : i + 32]], y[order[i : i + 32]]) for i in range(0, len(y), 32)]

    return make


def run() -> dict:
    """Train with a Dataset and with a callable of batches in this process (or torchrun rank); the records."""
    out = {}
    for mode in ("dataset", "callable"):
        student, teacher, data = build()
        source = data if mode == "dataset" else batches(data)
        result = train_distill(student, teacher, source, CONFIG, progress=False)
        out[mode] = {
            "losses": [h["loss"] for h in result.history],
            "weights": [p.detach().flatten().tolist() for p in result.student.parameters()],
        }
    return out


if __name__ == "__main__":
    info = init_from_env()
    record = run()
    if info.is_main:
        record["world_size"] = info.world_size
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            json.dump(record, f)
    # Both ranks reach this point before either exits. Tearing gloo down (destroy_process_group, or the
    # interpreter's own shutdown) still aborted a rank now and then ("terminate called without an
    # active exception", exit -6) although the run was complete: after the barrier each rank leaves at
    # once, without running C++ destructors; the record was written and closed above.
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
