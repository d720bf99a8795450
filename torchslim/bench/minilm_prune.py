"""``torchslim bench minilm-prune --data DIR``: unstructured and 2:4 pruning of MiniLM's encoder Linear layers.

Rows: ``fp32``; ``torchslim-magnitude-50``, ``torchslim-wanda-50``, ``torchslim-sparsegpt-50``
(50% per layer, one-shot, no training); ``torchslim-2of4`` and ``torchslim-sparse-70``: the method
(Wanda or SparseGPT) that scores best on the STS *dev* split, reported on test;
``torchslim-sparse-70-distilled``: Wanda 70% with its masks kept, distilled from the dense model (embedding +
hidden-state terms, one epoch of STS-train sentences, no labels), then baked. Calibration: 32 batches of
32 STS-train sentences; each layer is calibrated on the already-pruned earlier layers (sequential).
Embeddings, pooler-free; ``stsb_spearman`` is Spearman × 100 on the test split.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, Variant, model_variant
from torchslim.core.select import Select
from torchslim.pruning import MagnitudePruning, NMPruning, SparseGPTPruning, WandaPruning, bake_

# No row is a built-in recipe: the wanda-50 row calibrates on 32 batches, encoder only.
TABLE = BenchTable(
    name="minilm-prune",
    workload="minilm-stsb",
    rows=(
        "fp32",
        "torchslim-magnitude-50",
        "torchslim-wanda-50",
        "torchslim-sparsegpt-50",
        "torchslim-2of4",
        "torchslim-sparse-70",
        "torchslim-sparse-70-distilled",
    ),
    metrics=("stsb_spearman", "cos_min"),
    columns=("nonzero",),
    rounds=(3, 10),
    warmup=(1, 2),
)

ENCODER_LINEARS = Select(types=("Linear",), include=(r"encoder\.layer\.",))


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark on the STS benchmark folder ``data`` (default: ``$TORCHSLIM_DATA/stsbenchmark``)."""
    from torchslim.bench.minilm_kd import PRUNED_CONFIG, distill_student

    wl, base, ctx = TABLE.setup(data)
    # 32 x 32 STS-train sentences (~14k tokens): the Hessians of 1536-wide layers need more than 8 batches.
    ctx.calibration = wl.calibration(32)
    x = ctx.example_inputs
    notes = []

    def pruned(cfg) -> nn.Module:
        return compress_(copy.deepcopy(base), cfg, select=ENCODER_LINEARS, ctx=ctx)

    def best_of(candidates: dict[str, object]) -> tuple[str, nn.Module]:
        scored = {}
        for name, cfg in candidates.items():
            model = pruned(cfg)
            scored[name] = (wl.evaluate(model, "dev", with_cos=False)[wl.metric], model)
        winner = max(scored, key=lambda k: scored[k][0])
        notes.append("dev split: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in scored.items()) + f" -> {winner}")
        return winner, scored[winner][1]

    def variant(name: str, model: nn.Module) -> Variant:
        return model_variant(name, model, x, wl.evaluate(model.eval(), "test"), measures=("nonzero",))

    variants = [
        variant("fp32", base),
        variant("torchslim-magnitude-50", pruned(MagnitudePruning(sparsity=0.5, scope="layer", keep_first_last=False))),
        variant("torchslim-wanda-50", pruned(WandaPruning(sparsity=0.5, keep_first_last=False))),
        variant("torchslim-sparsegpt-50", pruned(SparseGPTPruning(sparsity=0.5, keep_first_last=False))),
    ]
    _, m = best_of(
        {
            "wanda": NMPruning(2, 4, method="wanda", keep_first_last=False),
            "sparsegpt": NMPruning(2, 4, method="sparsegpt", keep_first_last=False),
        }
    )
    variants.append(variant("torchslim-2of4", m))
    _, m = best_of(
        {
            "wanda": WandaPruning(sparsity=0.7, keep_first_last=False),
            "sparsegpt": SparseGPTPruning(sparsity=0.7, keep_first_last=False),
        }
    )
    variants.append(variant("torchslim-sparse-70", m))
    # 70% Wanda with the masks kept, then embedding + hidden-state distillation from the dense model on the
    # STS train sentences (no labels; best weights by dev Spearman), then the masks baked.
    masked = pruned(WandaPruning(sparsity=0.7, keep_first_last=False, bake=False))
    run = distill_student(wl, base, masked, PRUNED_CONFIG.replace(epochs=1))
    evals = ", ".join(f"{e['step']}: {e['stsb_spearman']:.2f}" for e in run.evals)
    notes.append(f"sparse-70-distilled: wanda-70 + {PRUNED_CONFIG.replace(epochs=1).to_json()}; dev by step {evals}")
    variants.append(variant("torchslim-sparse-70-distilled", bake_(run.student)))
    notes.append("unstructured/2:4 sparsity saves size here, not CPU time (dense kernels); batch 32 x 128")
    return TABLE.run(variants, quick, notes)
