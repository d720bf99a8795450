"""``torchslim bench minilm-structured --data DIR``: structural compression of all-MiniLM-L6-v2 on STS-B.

Rows (all from the pretrained model, no training; timed interleaved at batch 32 × 128 tokens):

- ``fp32``: the pretrained encoder.
- ``torchslim-heads50-ffn50``: ChannelPruning removing 50 % of the attention heads and 50 % of the FFN
  neurons of every layer, activation-aware importance on 8 calibration batches; hidden size kept.
- ``torchslim-lowrank-ffn50``: LowRank at half rank on every FFN Linear (intermediate and output).
- ``torchslim-drop-3-layers``: LayerDropping of 3 blocks, chosen greedily as those whose skipping moves
  the embeddings of the 8 calibration batches least (``criterion="output"``; on the dev split it beat
  ShortGPT's Block Influence, 84.08 against 80.11 Spearman).
- ``peer-torch-pruning-heads50-ffn50``: Torch-Pruning called directly (L2 magnitude, hidden size kept by
  ignoring the layers that write it, head attributes patched by hand).

Quality is ``stsb_spearman`` (Spearman × 100 on the test split) and ``cos_min`` (worst cosine to fp32).
``speedup`` uses the process's threads; ``speedup_1thread`` repeats the interleaved timing on one thread,
which other load disturbs less (a descheduled second thread stalls every call).
"""

from __future__ import annotations

import copy

import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, macs_reduction, model_variant, speedup_column
from torchslim.core.select import Select
from torchslim.structured import ChannelPruning, LayerDropping, LowRank

# No row is a built-in recipe.
TABLE = BenchTable(
    name="minilm-structured",
    workload="minilm-stsb",
    rows=(
        "fp32",
        "torchslim-heads50-ffn50",
        "torchslim-lowrank-ffn50",
        "torchslim-drop-3-layers",
        "peer-torch-pruning-heads50-ffn50",
    ),
    metrics=("stsb_spearman", "cos_min"),
    columns=("params", "macs", "macs_reduction", "speedup_1thread"),
    rounds=(5, 20),
    warmup=(1, 3),
)

FFN = Select(include=(r"intermediate\.dense$", r"layer\.\d+\.output\.dense$"))


def peer_torch_pruning_heads_ffn(model: nn.Module, example_inputs: tuple, ratio: float = 0.5) -> nn.Module:
    """Torch-Pruning used directly on a BERT encoder: whole heads and FFN neurons, L2 magnitude."""
    import torch_pruning as tp

    layers = model.bert.encoder.layer
    num_heads = {}
    for layer in layers:
        att = layer.attention.self
        num_heads.update({att.query: att.num_attention_heads, att.key: att.num_attention_heads})
        num_heads[att.value] = att.num_attention_heads
    # The layers whose outputs form the residual stream are ignored, which keeps the hidden size.
    ignored = [m for layer in layers for m in (layer.attention.output.dense, layer.output.dense)]
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
    )
    pruner.step()
    for layer in layers:  # what the Torch-Pruning BERT example does by hand
        att = layer.attention.self
        att.num_attention_heads = att.query.out_features // att.attention_head_size
        att.all_head_size = att.query.out_features
    return model.eval()


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark; ``data`` is the STS benchmark folder (default: ``$TORCHSLIM_DATA/stsbenchmark``)."""
    wl, base, ctx = TABLE.setup(data)
    x = ctx.example_inputs
    models = {
        "fp32": base,
        "torchslim-heads50-ffn50": compress_(
            wl.model(), ChannelPruning(ratio=0.5, head_ratio=0.5, importance="activation"), ctx=ctx
        ),
        "torchslim-lowrank-ffn50": compress_(wl.model(), LowRank(rank_ratio=0.5), select=FFN, ctx=ctx),
        "torchslim-drop-3-layers": compress_(wl.model(), LayerDropping(least_important=3, criterion="output"), ctx=ctx),
        "peer-torch-pruning-heads50-ffn50": peer_torch_pruning_heads_ffn(copy.deepcopy(base), x),
    }
    variants = [
        model_variant(n, m, x, lambda m=m: wl.evaluate(m), measures=("params", "macs")) for n, m in models.items()
    ]
    macs_reduction(variants)
    speedup_column(variants, x, "speedup_1thread", rounds=3 if quick else 10, warmup=1, n_threads=1)
    notes = [f"latency per batch of {x[0].shape[0]} sentences x {x[0].shape[1]} tokens; STS-B test split; no training"]
    notes += [e for e in ctx.events if e.startswith("layer-dropping: dropped")]
    return TABLE.run(variants, quick, notes)
