"""``torchslim bench digits``: the digits teacher CNN, fp32 against our variants and the peers'.

Rows: ``fp32``; ``torchslim-bf16`` (the built-in ``bf16`` recipe: CastDtype); ``peer-torch-autocast-bf16``
(``torch.autocast``, the usual PyTorch way to run in bf16, weights stay fp32 on disk); ``torchslim-fold-bn``;
``torchslim-default``; ``torchslim-int8-static`` (Int8Static: BN folded, ReLU fused, calibrated uint8
activations, oneDNN int8 convolutions): each of these four is its built-in recipe (``TABLE.recipes``), so
``torchslim compress --workload digits --recipe NAME`` rebuilds it; ``peer-torch.ao-int8-static`` (``torch.ao.quantization``
FX graph mode static quantization with the x86 default qconfig, deprecated but still shipped; its
size is ``torch.save`` bytes since its quantized tensors do not fit safetensors).
"""

from __future__ import annotations

import copy

import torch.nn as nn

from torchslim.bench.harness import BenchResult, BenchTable, Variant, model_variant
from torchslim.bench.peers import Autocast, torch_ao_static
from torchslim.measure import artifact_bytes
from torchslim.recipes import load_recipe, run_recipe

TABLE = BenchTable(
    name="digits",
    workload="digits",
    rows=(
        "fp32",
        "torchslim-bf16",
        "peer-torch-autocast-bf16",
        "torchslim-fold-bn",
        "torchslim-default",
        "torchslim-int8-static",
        "peer-torch.ao-int8-static",
    ),
    metrics=("accuracy",),
    columns=("params", "macs"),
    recipes={
        "torchslim-bf16": "bf16",
        "torchslim-fold-bn": "fold-bn",
        "torchslim-default": "default",
        "torchslim-int8-static": "int8-static",
    },
    rounds=(10, 50),
    warmup=(3, 10),
)


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the digits benchmark (``data`` is unused: scikit-learn ships the data set)."""
    wl, teacher, ctx = TABLE.setup(data)
    x = ctx.example_inputs

    def variant(name: str, model: nn.Module, size: int | None = None) -> Variant:
        quality = lambda: wl.evaluate(model, "test")  # noqa: E731
        return model_variant(name, model, x, quality, size_bytes=size, measures=("params", "macs"))

    ours = {
        name: run_recipe(copy.deepcopy(teacher), load_recipe(recipe), ctx, measure_steps=False)[0]
        for name, recipe in TABLE.recipes.items()
    }
    peer_static, peer_static_size = torch_ao_static(teacher, x, ctx.calibration)
    peers = {
        "peer-torch-autocast-bf16": (Autocast(teacher), artifact_bytes(teacher)),
        "peer-torch.ao-int8-static": (peer_static, peer_static_size),
    }
    variants = [variant("fp32", teacher)]
    variants += [variant(n, ours[n]) if n in ours else variant(n, *peers[n]) for n in TABLE.rows[1:]]
    return TABLE.run(variants, quick, [f"latency per batch of {x[0].shape[0]} images; accuracy on the full test split"])
