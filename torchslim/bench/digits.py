"""``torchslim bench digits``: the digits teacher CNN, fp32 against our variants and the peers'.

Rows: ``fp32``; ``torchslim-bf16`` (the built-in ``bf16`` recipe: CastDtype); ``peer-torch-autocast-bf16``
(``torch.autocast``, the usual PyTorch way to run in bf16, weights stay fp32 on disk); ``torchslim-fold-bn``;
``torchslim-default``; ``torchslim-int8-static`` (Int8Static: BN folded, ReLU fused, calibrated uint8
activations, oneDNN int8 convolutions): each of these four is its built-in recipe (:data:`RECIPES`), so
``torchslim compress --workload digits --recipe NAME`` rebuilds it; ``peer-torch.ao-int8-static`` (``torch.ao.quantization``
FX graph mode static quantization with the x86 default qconfig, deprecated but still shipped; its
size is ``torch.save`` bytes since its quantized tensors do not fit safetensors).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from torchslim.bench.harness import BenchResult, Variant, model_variant, run_benchmark
from torchslim.measure import artifact_bytes
from torchslim.recipes import load_recipe, run_recipe

WORKLOAD = "digits"  # the workload every row is built from (reproduce commands: --workload digits)
# Rows built by a built-in recipe: variant -> recipe name (the row's reproduce command is `torchslim compress`).
RECIPES = {
    "torchslim-bf16": "bf16",
    "torchslim-fold-bn": "fold-bn",
    "torchslim-default": "default",
    "torchslim-int8-static": "int8-static",
}


class _Autocast(nn.Module):
    """The peer's bf16: fp32 weights, matmuls and convs autocast to bf16 at run time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(*args).float()


def _torch_ao_static(model: nn.Module, x: tuple, calibration: list) -> tuple[nn.Module, int]:
    """The peer: torch.ao FX graph mode post-training static quantization (fuses conv-bn-relu itself)."""
    import io
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warnings, once per call
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), x)
        with torch.no_grad():
            for batch in calibration:
                prepared(*batch)
        quantized = convert_fx(prepared)
    buf = io.BytesIO()
    torch.save(quantized.state_dict(), buf)
    return quantized, buf.tell()


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the digits benchmark (``data`` is unused: scikit-learn ships the data set)."""
    from torchslim.workloads import get_workload

    wl = get_workload(WORKLOAD)
    teacher = wl.model()
    ctx = wl.context()
    x = ctx.example_inputs

    def variant(name: str, model: nn.Module, size: int | None = None) -> Variant:
        quality = lambda: wl.evaluate(model, "test")  # noqa: E731
        return model_variant(name, model, x, quality, size_bytes=size, measures=("params", "macs"))

    ours = {
        name: run_recipe(copy.deepcopy(teacher), load_recipe(recipe), ctx, measure_steps=False)[0]
        for name, recipe in RECIPES.items()
    }
    peer_static, peer_static_size = _torch_ao_static(teacher, x, ctx.calibration)
    variants = [
        variant("fp32", teacher),
        variant("torchslim-bf16", ours["torchslim-bf16"]),
        variant("peer-torch-autocast-bf16", _Autocast(teacher), size=artifact_bytes(teacher)),
        variant("torchslim-fold-bn", ours["torchslim-fold-bn"]),
        variant("torchslim-default", ours["torchslim-default"]),
        variant("torchslim-int8-static", ours["torchslim-int8-static"]),
        variant("peer-torch.ao-int8-static", peer_static, size=peer_static_size),
    ]
    result = run_benchmark("digits", variants, rounds=10 if quick else 50, warmup=3 if quick else 10)
    result.notes.append(f"latency per batch of {x[0].shape[0]} images; accuracy on the full test split")
    return result
