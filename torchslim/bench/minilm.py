"""``torchslim bench minilm-stsb --data DIR``: all-MiniLM-L6-v2 on STS-B, fp32 against our int8/bf16 and the peers'.

Rows (each: latency at batch 32 × 128 tokens, speedup over fp32 in the same run, artifact size,
``stsb_spearman`` on the test split and ``cos_min``, the worst sentence's cosine to fp32):

- ``fp32``; ``torchslim-bf16`` (the built-in ``bf16`` recipe: CastDtype);
- ``torchslim-int8-dynamic``: the built-in ``int8-dynamic-compiled`` recipe, read from its file (so
  ``torchslim compress --workload minilm-stsb --recipe int8-dynamic-compiled`` builds this row):
  ``Int8Dynamic(compile=True, compute_dtype="bfloat16", smoothquant=0.5, min_sqnr_db=33, outliers=32,
  fallback="float32")`` (LayerNorm, attention and activations in bf16;
  per-token int8 activations, per-channel int8 weights, int8 embeddings, SmoothQuant from 8 calibration
  batches of STS *train* sentences, a layer under 33 dB keeps its few largest input channels in float32
  or else stays unquantized, whole model compiled in place with the int8 backend of
  :mod:`torchslim.quantization.int8.compile_cpu`);
  ``torchslim-int8-dynamic-eager``: the same without compile and with float32 compute (no built-in
  recipe; the plain ``int8-dynamic`` recipe has no SmoothQuant or SQNR guard); ``torchslim-int8-weight-only``:
  the built-in ``int8-weight-only`` recipe (``Int8WeightOnly()``);
- ``torchslim-int4-{rtn,gptq,awq,hqq}-g128``: ``Int4WeightOnly(group_size=128, method=...)`` on every Linear
  (packed int4, bf16 group scales and zeros; at 32 × 128 tokens the weight is dequantized to bf16 per call
  for a bf16 GEMM, the int4 kernel serves small batches; GPTQ/AWQ calibrate layer by layer on the same 8
  train batches);
- ``peer-torch.ao-int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` (deprecated; fbgemm,
  per-tensor activations); ``peer-torchao-int8-dynamic-compiled``: torchao
  ``Int8DynamicActivationInt8WeightConfig`` + ``torch.compile``; ``peer-onnxruntime-int8``: ONNX
  export + ``onnxruntime.quantization.quantize_dynamic(per_channel=True)``, run by ONNX Runtime with
  the same thread count.

A peer that cannot be built here (missing package, export failure) is left out with a note, never
faked. Peers' sizes are what they save: ``torch.save`` bytes (their tensor types do not fit
safetensors) or the ``.onnx`` file.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, RowBuilder, recipe_config, torch_save_bytes
from torchslim.bench.peers import torch_ao_dynamic
from torchslim.core.context import Context
from torchslim.measure import artifact_bytes
from torchslim.quantization import Int4WeightOnly

TABLE = BenchTable(
    name="minilm-stsb",
    workload="minilm-stsb",
    rows=(
        "fp32",
        "torchslim-bf16",
        "torchslim-int8-dynamic",
        "torchslim-int8-dynamic-eager",
        "torchslim-int8-weight-only",
        "torchslim-int4-rtn-g128",
        "torchslim-int4-gptq-g128",
        "torchslim-int4-awq-g128",
        "torchslim-int4-hqq-g128",
        "peer-torch.ao-int8-dynamic",
        "peer-torchao-int8-dynamic-compiled",
        "peer-onnxruntime-int8",
    ),
    metrics=("stsb_spearman", "cos_min"),
    columns=("build_s",),
    recipes={
        "torchslim-bf16": "bf16",
        "torchslim-int8-dynamic": "int8-dynamic-compiled",
        "torchslim-int8-weight-only": "int8-weight-only",
    },
    rounds=(5, 20),
    warmup=(1, 3),
)


def configs() -> dict[str, Any]:
    """Our rows' technique configs, variant name -> config, in row order (the recipe rows read their files).

    Example:
        >>> c = configs()
        >>> c["torchslim-int8-dynamic"].compile, c["torchslim-int8-dynamic-eager"].compile
        (True, False)
    """
    compiled = recipe_config(TABLE.recipes["torchslim-int8-dynamic"])
    return {
        "torchslim-bf16": recipe_config(TABLE.recipes["torchslim-bf16"]),
        "torchslim-int8-dynamic": compiled,
        "torchslim-int8-dynamic-eager": dataclasses.replace(compiled, compile=False, compute_dtype="float32"),
        "torchslim-int8-weight-only": recipe_config(TABLE.recipes["torchslim-int8-weight-only"]),
        **{
            f"torchslim-int4-{method}-g128": Int4WeightOnly(group_size=128, method=method, progress=False)
            for method in ("rtn", "gptq", "awq", "hqq")
        },
    }


class _OrtEncoder(nn.Module):
    """An ONNX Runtime session behind the encoder's ``(input_ids, attention_mask) -> embeddings`` call."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        return torch.from_numpy(out[0])


def onnxruntime_int8(model: nn.Module, inputs: tuple[torch.Tensor, ...], workdir: str) -> tuple[nn.Module, int]:
    """ONNX export into ``workdir``, ``onnxruntime.quantization.quantize_dynamic(per_channel=True)``, and an
    ONNX Runtime session on torch's thread count; size: the int8 ``.onnx`` file."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model-int8.onnx")
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        model,
        inputs,
        fp32_path,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter handles the HF attention mask code; dynamo's needs more work
    )
    quantize_dynamic(fp32_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(int8_path, opts, providers=["CPUExecutionProvider"])
    return _OrtEncoder(session).eval(), os.path.getsize(int8_path)


def torchao_int8_compiled(fp32: nn.Module) -> tuple[nn.Module, int]:
    """torchao ``Int8DynamicActivationInt8WeightConfig`` then ``torch.compile`` (size: ``torch.save`` bytes)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    m = copy.deepcopy(fp32)
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    size = torch_save_bytes(m)
    m.compile()
    return m, size


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the MiniLM benchmark on the STS benchmark folder ``data`` (default: ``$TORCHSLIM_DATA/stsbenchmark``)."""
    from torchslim.workloads import get_workload

    wl = get_workload(TABLE.workload, data=data)
    fp32 = wl.model()
    x = wl.example_inputs()

    def warm(model: Any) -> None:
        with torch.inference_mode():
            model(*x)  # compiled variants specialise on the timed shape first (counted in build_s)

    rows = RowBuilder(warm=warm)
    calibration = wl.calibration(8)  # STS train sentences: the test split is for reporting only

    def ours(name: str, config: Any) -> Callable[[], tuple[nn.Module, int]]:
        def make() -> tuple[nn.Module, int]:
            ctx = Context(calibration=calibration)
            m = compress_(copy.deepcopy(fp32), config, ctx=ctx)
            rows.notes.extend(f"{name}: {e}" for e in ctx.events if "kept in" in e or "outlier" in e)
            return m, artifact_bytes(m)

        return make

    rows.add("fp32", lambda: (fp32, artifact_bytes(fp32)))
    for name, config in configs().items():
        rows.add(name, ours(name, config))
    rows.add("peer-torch.ao-int8-dynamic", lambda: torch_ao_dynamic(fp32))
    rows.add("peer-torchao-int8-dynamic-compiled", lambda: torchao_int8_compiled(fp32))
    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
        rows.add("peer-onnxruntime-int8", lambda: onnxruntime_int8(fp32, x, tmp))
        variants = rows.variants(x, quality=lambda model: lambda: wl.evaluate(model, "test"))
        note = (
            f"latency of one batch of {x[0].shape[0]} STS test sentences padded to {x[0].shape[1]} tokens, "
            f"{torch.get_num_threads()} threads, variants interleaved; quality on the full STS-B test split"
        )
        return TABLE.run(variants, quick, [note, *rows.notes])
