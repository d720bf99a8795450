"""``torchslim bench digits-structured``: structural channel pruning of the digits CNN, ours against the peers.

Rows (all from the same trained teacher, timed interleaved in one process):

- ``fp32``: the teacher.
- ``torchslim-macs2x`` / ``torchslim-macs4x``: the built-in recipes ``channels-2x`` / ``channels-4x``
  (ChannelPruning to ≤ 1/2 or ≤ 1/4 of the MACs, then 10 epochs of fine-tuning).
- ``peer-torch-pruning``: Torch-Pruning called directly as its README shows (``BasePruner``, L2
  magnitude, classifier ignored) at the per-layer channel ratio our 2× row reached; no fine-tuning.
- ``peer-torch-prune-ln-structured``: ``torch.nn.utils.prune.ln_structured`` (L2, dim 0) on every conv at
  that ratio: masks only, so the model keeps its size and speed.

Each row has ``macs`` (per image), ``macs_reduction`` (fp32 MACs / row MACs), ``params`` and accuracy; the
``speedup`` column (batch of 64, the workload's example inputs, where per-call overhead is a large part)
is the measured latency ratio to put beside ``macs_reduction``; ``speedup_b512`` is the same ratio for a
batch of 512 test images, timed interleaved in a second pass, where the convolutions dominate.

Timing runs on one thread: the model takes about a millisecond, and on a shared machine a second
intra-op thread that loses its core makes every call wait a scheduler slice (medians of ≈100 ms were
seen with 2 threads), which would measure the machine's load rather than the model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from torchslim.bench.harness import BenchResult, Variant, model_variant, run_benchmark
from torchslim.measure import count_macs, interleaved_latency
from torchslim.recipes import load_recipe, run_recipe

WORKLOAD = "digits"
# Rows built by a built-in recipe: variant -> recipe name (reproduce: `torchslim compress --recipe NAME`).
RECIPES = {"torchslim-macs2x": "channels-2x", "torchslim-macs4x": "channels-4x"}


def _conv_ratio(pruned: nn.Module, original: nn.Module) -> float:
    """Fraction of conv output channels removed (the per-layer ratio of a ``scope="layer"`` run)."""
    kept = sum(m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d))
    total = sum(m.out_channels for m in original.modules() if isinstance(m, nn.Conv2d))
    return 1.0 - kept / total


def peer_torch_pruning(model: nn.Module, example_inputs: tuple, ratio: float) -> nn.Module:
    """Torch-Pruning as its documentation uses it: one-shot L2 magnitude pruning, classifier ignored."""
    import torch_pruning as tp

    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    return model.eval()


def peer_ln_structured(model: nn.Module, ratio: float) -> nn.Module:
    """``torch.nn.utils.prune.ln_structured``: zero whole filters by L2 norm (a mask; nothing is removed)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            torch_prune.ln_structured(module, "weight", amount=ratio, n=2, dim=0)
    return model.eval()


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark (``data`` is unused: scikit-learn ships the digits)."""
    from torchslim.workloads import get_workload

    wl = get_workload(WORKLOAD)
    teacher = wl.model()
    ctx = wl.context()
    x = ctx.example_inputs
    base_macs = count_macs(teacher, x, per_sample=True)

    def variant(name: str, model: nn.Module) -> Variant:
        v = model_variant(name, model, x, wl.evaluate(model.eval(), "test"), measures=("params", "macs"))
        v.extra["macs_reduction"] = round(base_macs / v.extra["macs"], 3)
        return v

    macs2x, macs4x = (
        run_recipe(copy.deepcopy(teacher), load_recipe(RECIPES[name]), ctx, measure_steps=False)[0]
        for name in ("torchslim-macs2x", "torchslim-macs4x")
    )
    ratio = _conv_ratio(macs2x, teacher)
    variants = [
        variant("fp32", teacher),
        variant("torchslim-macs2x", macs2x),
        variant("torchslim-macs4x", macs4x),
        variant("peer-torch-pruning", peer_torch_pruning(copy.deepcopy(teacher), x, ratio)),
        variant("peer-torch-prune-ln-structured", peer_ln_structured(copy.deepcopy(teacher), ratio)),
    ]
    big = (wl.splits()["test_x"][:512].clone(),)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {v.name: v.model for v in variants}
        lat = interleaved_latency(models, big, warmup=2 if quick else 5, rounds=10 if quick else 40)
        for v in variants:
            v.extra["speedup_b512"] = round(lat["fp32"].median_ms / lat[v.name].median_ms, 3)
        result = run_benchmark("digits-structured", variants, rounds=10 if quick else 50, warmup=3 if quick else 10)
    finally:
        torch.set_num_threads(threads)
    result.notes.append(
        f"latency on 1 thread per batch of {x[0].shape[0]} images; accuracy on the full test split; "
        f"peers pruned at the per-layer channel ratio of the 2x row ({ratio:.3f}), without fine-tuning"
    )
    return result
