"""``torchslim bench digits``: the digits teacher CNN, fp32 against our variants and the peers'.

Rows: ``fp32``; ``torchslim-bf16`` (CastDtype); ``peer-torch-autocast-bf16`` (``torch.autocast``, the
usual PyTorch way to run in bf16, weights stay fp32 on disk); ``torchslim-fold-bn``; ``torchslim-default``
(the built-in default recipe).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, Variant, run_benchmark
from torchslim.measure import artifact_bytes, count_macs, count_params
from torchslim.quantization import CastDtype
from torchslim.recipes import load_recipe, run_recipe
from torchslim.structured import FoldBatchNorm


class _Autocast(nn.Module):
    """The peer's bf16: fp32 weights, matmuls and convs autocast to bf16 at run time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(*args).float()


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the digits benchmark (``data`` is unused: scikit-learn ships the data set)."""
    from torchslim.workloads import get_workload

    wl = get_workload("digits")
    teacher = wl.model()
    ctx = wl.context()
    x = ctx.example_inputs

    def variant(name: str, model: nn.Module, size: int | None = None) -> Variant:
        model.eval()
        return Variant(
            name,
            model,
            x,
            size_bytes=artifact_bytes(model) if size is None else size,
            quality=lambda: wl.evaluate(model, "test"),
            extra={"params": count_params(model), "macs": count_macs(model, x, per_sample=True)},
        )

    bf16 = compress_(copy.deepcopy(teacher), CastDtype("bfloat16"))
    folded = compress_(copy.deepcopy(teacher), FoldBatchNorm())
    default, _ = run_recipe(copy.deepcopy(teacher), load_recipe("default"), ctx, measure_steps=False)
    variants = [
        variant("fp32", teacher),
        variant("torchslim-bf16", bf16),
        variant("peer-torch-autocast-bf16", _Autocast(teacher), size=artifact_bytes(teacher)),
        variant("torchslim-fold-bn", folded),
        variant("torchslim-default", default),
    ]
    result = run_benchmark("digits", variants, rounds=10 if quick else 50, warmup=3 if quick else 10)
    result.notes.append(f"latency per batch of {x[0].shape[0]} images; accuracy on the full test split")
    return result
