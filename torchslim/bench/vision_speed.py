"""``torchslim bench vision-speed``: static int8 on real image-classifier architectures, ours and the peers'.

Architectures (:mod:`torchslim.bench.vision_nets`, written from the papers' layer tables, seeded weights,
BatchNorm statistics set on seeded images): ``resnet18``, ``mobilenetv3-large``, ``efficientnet-b0`` at
224 × 224. Rows are ``ARCH/VARIANT``:

- ``fp32``; ``torchslim-bf16`` (the built-in ``bf16`` recipe: CastDtype);
- ``torchslim-int8-static`` (the built-in ``int8-static`` recipe: :class:`~torchslim.quantization.Int8Static`);
- ``torchslim-channels-2x-int8``: the ``channels-2x`` recipe's channel-pruning step (L2 importance, MACs
  halved) then ``int8-static``. The recipe's fine-tuning step is left out: the weights are random, there is
  nothing to recover;
- ``peer-torch.ao-int8-static``: ``torch.ao.quantization`` FX graph mode static quantization (x86 qconfig);
- ``peer-onnxruntime-int8-static``: ONNX export, ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel
  int8 weights, uint8 activations, min-max calibration on the same batches as ours), run by ONNX Runtime
  (its workers do not spin between calls, so they leave the cores to the row timed next).

Columns: ``speedup`` at batch 32 and ``speedup_b1`` at batch 1, each against the same architecture's fp32
(variants timed interleaved, per architecture); ``size_mb``; quality ``cosine`` (mean over images of the
logits' cosine similarity with fp32) and ``top1_agreement`` (share of images whose arg-max class equals
fp32's). There are no labelled images here: quality inputs are seeded random images normalised like
ImageNet (:func:`~torchslim.bench.vision_nets.imagenet_like`), the calibration distribution (other seeds).
``--quick``: ResNet-18 only at 64 × 64, batch 4, fewer rounds.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.bench.harness import (
    BenchResult,
    BenchTable,
    RowBuilder,
    Variant,
    recipe_config,
    speedup_column,
)
from torchslim.bench.peers import torch_ao_static
from torchslim.bench.vision_nets import ARCHS, build, imagenet_like
from torchslim.measure import artifact_bytes

VARIANTS = (
    "fp32",
    "torchslim-bf16",
    "torchslim-int8-static",
    "torchslim-channels-2x-int8",
    "peer-torch.ao-int8-static",
    "peer-onnxruntime-int8-static",
)


@dataclass(frozen=True)
class ArchTable(BenchTable):
    """A :class:`BenchTable` whose rows are ``ARCH/VARIANT``: each architecture's rows are checked as a
    table of their own (``fp32`` first, peers optional), with speedups against that architecture's fp32."""

    def __post_init__(self) -> None:
        for arch in dict.fromkeys(r.partition("/")[0] for r in self.rows):
            self.per_arch(arch)  # each architecture's rows follow the naming rules

    def per_arch(self, arch: str) -> BenchTable:
        rows = tuple(r.partition("/")[2] for r in self.rows if r.partition("/")[0] == arch)
        return BenchTable(
            f"{self.name}:{arch}",
            self.workload,
            rows,
            self.metrics,
            self.columns,
            rounds=self.rounds,
            warmup=self.warmup,
        )

    def check(self, result: BenchResult) -> BenchResult:
        archs = [r["variant"].partition("/")[0] for r in result.rows]
        declared = list(dict.fromkeys(r.partition("/")[0] for r in self.rows))
        if [a for a in declared if a in archs] != list(dict.fromkeys(archs)) or not set(archs) <= set(declared):
            raise ValueError(f"{self.name}: architectures {sorted(set(archs))} are not {declared} in order")
        for arch in dict.fromkeys(archs):
            rows = [
                r | {"variant": r["variant"].partition("/")[2]}
                for r in result.rows
                if r["variant"].startswith(arch + "/")
            ]
            self.per_arch(arch).check(BenchResult(result.benchmark, rows))
        return result


TABLE = ArchTable(
    name="vision-speed",
    # Tables name a registered workload; no row here resolves to a workload command (no bare ``fp32`` row, no
    # recipe rows: every row reproduces with this benchmark), so this is only the image workload closest to it.
    workload="digits",
    rows=tuple(f"{arch}/{v}" for arch in ARCHS for v in VARIANTS),
    metrics=("cosine", "top1_agreement"),
    columns=("build_s", "speedup_b1"),
    rounds=(3, 7),
    warmup=(1, 3),
)


def agreement(reference: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Mean per-image cosine similarity of the logits and the top-1 agreement with ``reference``.

    Example:
        >>> ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> agreement(ref, torch.tensor([[2.0, 0.0], [1.0, 0.0]]))
        {'cosine': 0.5, 'top1_agreement': 0.5}
    """
    out = out.float()
    return {
        "cosine": float(F.cosine_similarity(out, reference, dim=1).mean()),
        "top1_agreement": float((out.argmax(1) == reference.argmax(1)).float().mean()),
    }


class _OrtClassifier(nn.Module):
    """An ONNX Runtime session behind the classifier's ``images -> logits`` call."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": x.numpy()})[0])


def onnxruntime_int8_static(
    model: nn.Module, calibration: list[tuple[torch.Tensor]], workdir: str
) -> tuple[nn.Module, int]:
    """ONNX export, ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, min-max on
    ``calibration``) and a session on torch's thread count; size: the int8 ``.onnx`` file."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_path, int8_path = os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model-int8.onnx")
    torch.onnx.export(
        model,
        calibration[0],
        fp32_path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": b[0].numpy()} for b in calibration])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    quantize_static(
        fp32_path,
        int8_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # Its workers would otherwise spin after each call, taking the cores from the next row timed interleaved.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(int8_path, opts, providers=["CPUExecutionProvider"])
    return _OrtClassifier(session).eval(), os.path.getsize(int8_path)


def _ours(base: nn.Module, calibration: list, example: tuple, prune: bool) -> tuple[nn.Module, int]:
    from torchslim.api import compress_
    from torchslim.core.context import Context

    m = copy.deepcopy(base)
    if prune:  # the channels-2x recipe's pruning step (its fine-tuning needs labelled data)
        from torchslim.recipes import load_recipe

        step = load_recipe("channels-2x").steps[0]
        compress_(m, step.config, ctx=Context(example_inputs=example, calibration=calibration))
    compress_(m, recipe_config("int8-static"), ctx=Context(calibration=calibration))
    return m, artifact_bytes(m)


def _arch_rows(arch: str, quick: bool, size: int, batch: int, tmp: str) -> tuple[list[Variant], list[str]]:
    from torchslim.api import compress_

    base = build(arch, size=size, batch=min(batch, 8))
    calibration = [(imagenet_like(min(batch, 8), size, seed=10 + i),) for i in range(2 if quick else 4)]
    x, x1 = (imagenet_like(batch, size, seed=50),), (imagenet_like(1, size, seed=51),)
    probe = imagenet_like(batch if quick else 32, size, seed=60)
    with torch.inference_mode():
        reference = base(probe)

    def warm(model: Any) -> None:
        with torch.inference_mode():
            for inputs in (x, x1):
                model(*inputs)

    rows = RowBuilder(warm=warm)
    rows.add("fp32", lambda: (base, artifact_bytes(base)))
    rows.add("torchslim-bf16", lambda: _sized(compress_(copy.deepcopy(base), recipe_config("bf16"))))
    rows.add("torchslim-int8-static", lambda: _ours(base, calibration, x1, prune=False))
    # Pruning traces and counts MACs at 64 x 64: the MAC ratio of a conv net does not depend on the resolution.
    small = (imagenet_like(1, min(size, 64), seed=52),)
    rows.add("torchslim-channels-2x-int8", lambda: _ours(base, calibration, small, prune=True))
    rows.add("peer-torch.ao-int8-static", lambda: torch_ao_static(base, x, calibration))
    rows.add("peer-onnxruntime-int8-static", lambda: onnxruntime_int8_static(base, calibration, tmp))

    def quality(model: Any) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            with torch.inference_mode():
                return agreement(reference, model(probe))

        return run

    variants = rows.variants(x, quality=quality)
    return variants, [f"{arch}: {n}" for n in rows.notes]


def _sized(model: nn.Module) -> tuple[nn.Module, int]:
    return model, artifact_bytes(model)


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the vision-speed benchmark (``data`` is unused: the images are seeded random tensors)."""
    from torchslim import kernels

    # The C++ kernels (the static int8 1×1 loop) compile once per machine and are cached: built before the
    # rows so that no row's build_s carries the compiler.
    backend = kernels.load()
    archs = ("resnet18",) if quick else tuple(ARCHS)
    size, batch = (64, 4) if quick else (224, 32)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for arch in archs:
        with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
            variants, arch_notes = _arch_rows(arch, quick, size, batch, tmp)
            x1 = (imagenet_like(1, size, seed=51),)
            speedup_column(
                variants,
                x1,
                "speedup_b1",
                rounds=TABLE.rounds_for(quick) * 3,
                warmup=TABLE.warmup_for(quick),
                n_threads=torch.get_num_threads(),
            )
            result = TABLE.per_arch(arch).run(variants, quick)
        rows += [r | {"variant": f"{arch}/{r['variant']}"} for r in result.rows]
        notes += arch_notes
    notes.insert(
        0,
        f"{size}x{size} images; speedup: batch {batch}, speedup_b1: batch 1, both against the architecture's fp32 on "
        f"{torch.get_num_threads()} threads, variants interleaved; quality: logits against fp32 on seeded random "
        "ImageNet-normalised images (no labels: weights are seeded, not trained); torchslim kernels: "
        f"{backend} (small 1x1 static int8 convolutions take them on avx512-vnni)",
    )
    return BenchResult(TABLE.name, rows, notes=notes)
