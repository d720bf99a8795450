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

Timing runs on one thread: the model is small, and a second intra-op thread that loses its core makes
every call wait a scheduler slice, which would measure the machine's load rather than the model.
"""

from __future__ import annotations

import copy

import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from torchslim.bench.harness import BenchResult, BenchTable, macs_reduction, model_variant, speedup_column, threads
from torchslim.recipes import load_recipe, run_recipe

TABLE = BenchTable(
    name="digits-structured",
    workload="digits",
    rows=("fp32", "torchslim-macs2x", "torchslim-macs4x", "peer-torch-pruning", "peer-torch-prune-ln-structured"),
    metrics=("accuracy",),
    columns=("params", "macs", "macs_reduction", "speedup_b512"),
    recipes={"torchslim-macs2x": "channels-2x", "torchslim-macs4x": "channels-4x"},
    rounds=(10, 50),
    warmup=(3, 10),
)


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
    wl, teacher, ctx = TABLE.setup(data)
    x = ctx.example_inputs
    macs2x, macs4x = (
        run_recipe(copy.deepcopy(teacher), load_recipe(TABLE.recipes[name]), ctx, measure_steps=False)[0]
        for name in ("torchslim-macs2x", "torchslim-macs4x")
    )
    ratio = _conv_ratio(macs2x, teacher)
    models = {
        "fp32": teacher,
        "torchslim-macs2x": macs2x,
        "torchslim-macs4x": macs4x,
        "peer-torch-pruning": peer_torch_pruning(copy.deepcopy(teacher), x, ratio),
        "peer-torch-prune-ln-structured": peer_ln_structured(copy.deepcopy(teacher), ratio),
    }
    variants = [
        model_variant(n, m, x, wl.evaluate(m.eval(), "test"), measures=("params", "macs")) for n, m in models.items()
    ]
    macs_reduction(variants)
    big = (wl.splits()["test_x"][:512].clone(),)
    rounds, warmup = (10, 2) if quick else (40, 5)
    speedup_column(variants, big, "speedup_b512", rounds=rounds, warmup=warmup, n_threads=1)
    with threads(1):
        return TABLE.run(
            variants,
            quick,
            [
                f"latency on 1 thread per batch of {x[0].shape[0]} images; accuracy on the full test split; "
                f"peers pruned at the per-layer channel ratio of the 2x row ({ratio:.3f}), without fine-tuning"
            ],
        )
