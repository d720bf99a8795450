"""Worker for ``test_distributed_calibration.py``: compress a small seeded MLP with each calibrated recipe.

``torchrun --nproc_per_node 2 distributed_worker.py OUT.safetensors`` runs it split over two ranks
(rank 0 writes every recipe's state dict); the test also calls :func:`run` in one process.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.calibration import collect_input_stats
from torchslim.calibration.distributed import torchrun_calibration
from torchslim.core.context import Context
from torchslim.pruning import SparseGPTPruning, WandaPruning
from torchslim.quantization import Int4WeightOnly, Int8Dynamic

# Every technique whose statistics go through the calibration pass: Hessians (GPTQ, AWQ's check,
# SparseGPT), input norms (Wanda), captured rows (SmoothQuant with its SQNR search).
RECIPES = {
    "gptq": Int4WeightOnly(group_size=32, method="gptq"),
    "gptq-in-order": Int4WeightOnly(group_size=32, method="gptq", act_order=False),
    "awq": Int4WeightOnly(group_size=32, method="awq"),
    "wanda": WandaPruning(sparsity=0.5, keep_first_last=False),
    "sparsegpt": SparseGPTPruning(sparsity=0.5, keep_first_last=False),
    "smoothquant": Int8Dynamic(smoothquant="search"),
}


def model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32)).eval()


def calibration() -> list[torch.Tensor]:
    """Five batches (an odd count: the ranks get 3 and 2) of correlated inputs with a few large channels."""
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(64, 64, generator=g) / 8
    scale = torch.ones(64)
    scale[:4] = 20.0
    return [(torch.randn(16 + 3 * i, 64, generator=g) @ mix) * scale for i in range(5)]


def run() -> dict[str, torch.Tensor]:
    """The input statistics (``stats/``) and every recipe's state dict (``recipe/key``); one BLAS thread."""
    torch.set_num_threads(1)
    m = model()
    linears = {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    stats = collect_input_stats(m, linears, calibration(), hessian=True)
    out = {f"stats/{n}.hessian": s.hessian for n, s in stats.items()}
    out.update({f"stats/{n}.norm": s.norm for n, s in stats.items()})
    out.update({f"stats/{n}.count": torch.tensor(s.count) for n, s in stats.items()})
    for name, config in RECIPES.items():
        m = model()
        ts.compress_(m, config, ctx=Context(calibration=calibration()))
        for key, value in m.state_dict().items():
            if isinstance(value, torch.Tensor):
                out[f"{name}/{key}"] = value.detach().contiguous().clone()
    return out


if __name__ == "__main__":
    from safetensors.torch import save_file

    with torchrun_calibration() as shard:
        assert shard.world_size == int(os.environ["WORLD_SIZE"])
        tensors = run()
    if shard.is_main:
        save_file(tensors, sys.argv[1])
    # The group is gone (torchrun_calibration waited for every rank first); leave without C++ teardown,
    # which aborted a gloo rank now and then after a finished run (see tests/distillation/ddp_worker.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
