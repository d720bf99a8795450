"""``torchslim bench digits-prune``: unstructured pruning of the digits teacher, one-shot vs gradual.

Rows: ``fp32``; ``torchslim-oneshot-{50,80,90,95}`` (global magnitude, no training);
``torchslim-gradual-{50,80,90,95}`` (Zhu & Gupta cubic schedule with fine-tuning);
``torchslim-gradual-90-int8`` (the 90% model in static int8, stored as int8 values + byte deltas);
``peer-torch-prune-global-unstructured-90`` (``torch.nn.utils.prune.global_unstructured`` at 90%, no
fine-tuning, artifact = its state dict saved the usual way with ``torch.save``: ``weight_orig`` +
``weight_mask``). Sizes are artifact bytes (``ts.save`` stores pruned tensors as values + bitmask).
Unstructured sparsity saves size, not time: the latency column shows it.
"""

from __future__ import annotations

import copy

import torch.nn as nn
import torch.nn.utils.prune as tprune

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, Variant, model_variant, torch_save_bytes
from torchslim.pruning import GradualPruning, MagnitudePruning
from torchslim.quantization import Int8Static
from torchslim.structured import FoldBatchNorm

SPARSITIES = (50, 80, 90, 95)
INT8_AT = 90  # the gradual sparsity also shown in static int8

# No row is a built-in recipe (sparse-90 differs: its own schedule).
TABLE = BenchTable(
    name="digits-prune",
    workload="digits",
    rows=(
        "fp32",
        "torchslim-oneshot-50",
        "torchslim-oneshot-80",
        "torchslim-oneshot-90",
        "torchslim-oneshot-95",
        "torchslim-gradual-50",
        "torchslim-gradual-80",
        "torchslim-gradual-90",
        "torchslim-gradual-90-int8",
        "torchslim-gradual-95",
        "peer-torch-prune-global-unstructured-90",
    ),
    metrics=("accuracy",),
    columns=("nonzero",),
    rounds=(10, 40),
    warmup=(3, 10),
)


def gradual_config(sparsity: float) -> GradualPruning:
    return GradualPruning(final_sparsity=sparsity, steps=4, epochs_per_step=2, final_epochs=6, lr=1e-3)


def _peer_torch_prune(teacher: nn.Module, amount: float) -> tuple[nn.Module, int]:
    model = copy.deepcopy(teacher)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    return model, torch_save_bytes(model)  # how users save it: weight_orig + weight_mask, dense


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the digits pruning benchmark (scikit-learn ships the data)."""
    wl, teacher, ctx = TABLE.setup(data)
    x = ctx.example_inputs

    def variant(name: str, model: nn.Module, size: int | None = None) -> Variant:
        return model_variant(name, model, x, wl.evaluate(model.eval(), "test"), size_bytes=size, measures=("nonzero",))

    variants = [variant("fp32", teacher)]
    for s in SPARSITIES:
        m = compress_(copy.deepcopy(teacher), MagnitudePruning(sparsity=s / 100), ctx=ctx)
        variants.append(variant(f"torchslim-oneshot-{s}", m))
    for s in SPARSITIES:
        m = compress_(copy.deepcopy(teacher), gradual_config(s / 100), ctx=ctx)
        m = compress_(m, FoldBatchNorm(), ctx=ctx)
        variants.append(variant(f"torchslim-gradual-{s}", m))
        if s == INT8_AT:  # int8 values on the sparse layout: pruned zeros stay exact zeros in int8
            q = compress_(copy.deepcopy(m), Int8Static(), ctx=ctx)
            variants.append(variant(f"torchslim-gradual-{s}-int8", q))
    peer, peer_size = _peer_torch_prune(teacher, 0.9)
    variants.append(variant("peer-torch-prune-global-unstructured-90", peer, size=peer_size))
    notes = [
        "unstructured sparsity saves artifact size, not latency (dense kernels)",
        "gradual rows: BatchNorm folded after pruning (inference form)",
    ]
    return TABLE.run(variants, quick, notes)
