"""Worker for ``test_fsdp.py``: distil a small block-structured student with FSDP2; rank 0 writes JSON.

Run by ``torchrun --nproc_per_node 2 fsdp_worker.py OUT.json CKPT_DIR`` and in-process (one process,
no sharding) by the test for the reference run.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from torchslim.distillation import DistillConfig, LossTerm, train_distill
from torchslim.distillation.distributed import init_from_env
from torchslim.errors import ConfigError

# The DDP test's worker, read by path (this script runs under torchrun and in-process alike).
ddp_build = runpy.run_path(str(Path(__file__).with_name("ddp_worker.py")))["build"]

# kd + ce + a hidden-feature term from a sharded block (width 8 vs the teacher's 32: a projection in
# the root unit); evaluations every 4 steps keep the best weights.
CONFIG = DistillConfig(
    epochs=2,
    batch_size=32,
    lr=1e-2,
    eval_every=4,
    terms=(LossTerm("kd", 0.5), LossTerm("ce", 0.5), LossTerm("mse", 0.1, student="blocks.0", teacher="1")),
)


class Student(nn.Module):
    """An input layer, a ModuleList of blocks (FSDP's units), a head and a bool buffer (broadcast and gathered like the others)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.head = nn.Linear(8, 2)
        self.register_buffer("keep", torch.ones(8, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x)) * self.keep
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


def build() -> tuple[nn.Module, nn.Module, TensorDataset]:
    """The DDP test's seeded teacher and data with this block-structured student."""
    return ddp_build(Student)


class Batches:
    """Seeded ready-made batches of ``data``; raises KeyboardInterrupt at global batch ``stop`` (a Ctrl-C)."""

    def __init__(self, data: TensorDataset, stop: int = -1) -> None:
        self.x, self.y = data.tensors
        self.calls, self.seen, self.stop = 0, 0, stop

    def __call__(self):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.calls))
        self.calls += 1
        for i in range(0, len(self.y), 32):
            if self.seen == self.stop:
                raise KeyboardInterrupt
            self.seen += 1
            yield self.x[order[i : i + 32]], self.y[order[i : i + 32]]


def evaluator(teacher: nn.Module, data: TensorDataset, seen: list):
    """``eval_fn``: mean squared distance to the teacher's logits; records what the model held."""
    x = data.tensors[0][:64]
    with torch.no_grad():
        target = teacher(x)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        from torch.distributed.tensor import DTensor

        w = model.inp.weight
        seen.append(
            {"dtensor": isinstance(w, DTensor), "local_rows": (w.to_local() if isinstance(w, DTensor) else w).shape[0]}
        )
        with torch.no_grad():
            return {"mse": float((model(x) - target).square().mean())}

    return eval_fn


def train(parallel: str, mode: str = "dataset", checkpoint_dir: str | None = None, stop: int = -1) -> dict:
    student, teacher, data = build()
    seen: list = []
    source = data if mode == "dataset" else Batches(data, stop)
    run = train_distill(
        student,
        teacher,
        source,
        CONFIG,
        eval_fn=evaluator(teacher, data, seen),
        higher_is_better=False,
        checkpoint_dir=checkpoint_dir,
        progress=False,
        parallel=parallel,
    )
    return {
        "parallel": run.parallel,
        "losses": [h["loss"] for h in run.history],
        "evals": [e["mse"] for e in run.evals],
        "best": run.best,
        "weights": [p.detach().flatten().tolist() for p in run.student.parameters()],
        "param_types": sorted({type(p).__name__ for p in run.student.parameters()}),
        "student_class": type(run.student).__name__,
        "same_object": run.student is student,
        "seen": seen,
    }


def run() -> dict:
    """The reference: one process, the dataset and the callable."""
    return {mode: train("auto", mode) for mode in ("dataset", "callable")}


if __name__ == "__main__":
    info = init_from_env()
    out_path, ckpt = sys.argv[1], Path(sys.argv[2])
    record = {mode: train("fsdp", mode) for mode in ("dataset", "callable")}
    record["ddp"] = train("ddp", "dataset")["parallel"]
    # Resume: Ctrl-C while fetching the batch of step 11 (after the checkpoint at the end of epoch 1,
    # 8 steps), then the rerun continues from each rank's shards.
    try:
        train("fsdp", "callable", str(ckpt), stop=1 + 10)
        record["interrupted"] = False
    except KeyboardInterrupt:
        record["interrupted"] = True
    torch.distributed.barrier()  # both ranks have written their shards
    record["files"] = sorted(p.name for p in ckpt.iterdir())
    record["resumed"] = train("fsdp", "callable", str(ckpt))
    # One rank's shards missing (a kill between the ranks' writes): refused on every rank, no hang.
    torch.distributed.barrier()
    if info.is_main:
        (ckpt / "distill-checkpoint-rank1-of-2.pt").unlink()
    torch.distributed.barrier()
    try:
        train("fsdp", "callable", str(ckpt))
        record["mismatch"] = ""
    except ConfigError as e:
        record["mismatch"] = str(e)
    # "auto" shards when a rank's memory (here stated by TORCHSLIM_MEMORY_LIMIT) cannot hold DDP's state.
    os.environ["TORCHSLIM_MEMORY_LIMIT"] = "1K"
    record["auto"] = train("auto", "dataset")["parallel"]
    if info.is_main:
        record["world_size"] = info.world_size
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(record, f)
    torch.distributed.barrier()  # see ddp_worker.py: leave without tearing gloo down
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
