"""``torchslim bench minilm-edge``: all-MiniLM-L6-v2 with every technique composed (issue #21).

Rows, timed round-robin in one process:

- ``fp32``: the pretrained encoder;
- ``torchslim-int8-dynamic``: the built-in ``int8-dynamic-compiled`` recipe (the best single technique);
- ``torchslim-distill-3-layers``: blocks 0, 3, 5 kept and the embeddings distilled (as ``bench minilm-kd``);
- ``torchslim-edge``: the built-in ``minilm-edge`` recipe (drop 3 blocks → distil → a quarter of the heads
  and half the FFN neurons → distil → rank-256 factorized word-embedding table → distil → int8 compiled,
  int4 embedding rows);
- peers: ``peer-onnxruntime-int8`` (ONNX Runtime dynamic int8), ``peer-torchao-int8-dynamic-compiled``
  and ``peer-torch-compile-bf16`` (``torch.compile`` of the bf16 model, float32 embeddings out).

Distillation trains on the STS *train* split's sentences only (never the gold scores), the teacher is
the fp32 model and every vocabulary token keeps its row. The trained models are cached as artifacts
under ``cache_dir()/minilm-edge`` (``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``), keyed on the recipe
text, so a second run retrains nothing; delete that folder to retrain.

Columns: ``speedup`` (one batch of 32 test sentences padded to 128 tokens), ``speedup_b1`` (batch 1:
each of :data:`B1_SENTENCES` STS test sentences in its own call at its own length, summed), ``size_mb``
(the artifact), ``dev_spearman`` (the dev split, on which choices are made) and in ``quality`` the
test split's ``stsb_spearman`` and ``cos_min`` to the fp32 embeddings.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, RowBuilder, recipe_config, torch_save_bytes
from torchslim.bench.minilm import onnxruntime_int8, torchao_int8_compiled
from torchslim.bench.minilm_kd import KEEP, distill_student, train_sentences
from torchslim.core.batches import ModelInputs
from torchslim.core.context import Context
from torchslim.distillation import drop_blocks
from torchslim.io import load, save
from torchslim.measure import artifact_bytes, interleaved_latency
from torchslim.recipes import load_recipe, run_recipe
from torchslim.workloads.base import cache_dir

TABLE = BenchTable(
    name="minilm-edge",
    workload="minilm-stsb",
    rows=(
        "fp32",
        "torchslim-int8-dynamic",
        "torchslim-distill-3-layers",
        "torchslim-edge",
        "peer-onnxruntime-int8",
        "peer-torchao-int8-dynamic-compiled",
        "peer-torch-compile-bf16",
    ),
    metrics=("stsb_spearman", "cos_min"),
    columns=("build_s", "dev_spearman", "speedup_b1"),
    recipes={"torchslim-int8-dynamic": "int8-dynamic-compiled", "torchslim-edge": "minilm-edge"},
    rounds=(5, 20),
    warmup=(2, 5),
)
B1_SENTENCES = 64  # STS test sentences timed one per call in the batch-1 column
NO_ARGS = ModelInputs((), {})  # a OneByOne callable takes no inputs (an empty tuple reads as an empty batch)


def recipe_path(name: str) -> Any:
    """The built-in recipe file ``name`` (a context manager giving a path)."""
    return resources.as_file(resources.files("torchslim.recipes") / "builtin" / f"{name}.yaml")


def _cached(key: str, factory: Any, build: Any) -> nn.Module:
    """The artifact ``cache_dir()/minilm-edge/KEY`` loaded on ``factory``'s model, else ``build()`` saved there."""
    path = cache_dir() / "minilm-edge" / key
    if (path / "manifest.json").is_file():
        return load(path, factory)
    model = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, path, force=True)
    return model


def _recipe_key(name: str) -> str:
    with recipe_path(name) as p:
        return f"{name}-{hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12]}"


def build_edge(wl: Any, teacher: nn.Module) -> nn.Module:
    """The ``minilm-edge`` recipe on a fresh pretrained model: STS train sentences, fp32 ``teacher``."""
    with recipe_path("minilm-edge") as p:
        recipe = load_recipe(p)
    ctx = Context(
        example_inputs=wl.example_inputs(),
        calibration=wl.calibration(8),
        train_data=train_sentences(wl),
        teacher=teacher,
    )
    model, _ = run_recipe(wl.model(), recipe, ctx=ctx, measure_steps=False)
    return model


def build_distill3(wl: Any, teacher: nn.Module) -> nn.Module:
    """Blocks :data:`KEEP` of the teacher, embeddings distilled (best weights by dev Spearman)."""
    student = drop_blocks(teacher, list(KEEP)).requires_grad_(True)  # the copy of a frozen teacher is frozen too
    return distill_student(wl, teacher, student).student


class Bf16Encoder(nn.Module):
    """The encoder in bf16, returning float32 embeddings (compiled as a user would: ``model.compile()``)."""

    def __init__(self, fp32: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(fp32).to(torch.bfloat16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask).float()


def torch_compile_bf16(fp32: nn.Module) -> tuple[nn.Module, int]:
    """``torch.compile`` with Inductor's defaults of the bf16 model (size: ``torch.save`` bytes)."""
    m = Bf16Encoder(fp32).eval()
    size = torch_save_bytes(m)
    m.compile()
    return m, size


class OneByOne:
    """Calls ``model`` once per sentence (batch 1, each at its own length); the batch-1 timing's callable."""

    def __init__(self, model: Any, sentences: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.model, self.sentences = model, sentences

    def __call__(self) -> None:
        with torch.inference_mode():
            for ids, mask in self.sentences:
                self.model(ids, mask)


def batch1_inputs(wl: Any, n: int = B1_SENTENCES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` STS test sentences, each tokenised alone: ``[1, its length]`` ids and mask."""
    out = []
    for _, a, _ in wl.rows("test")[:n]:
        enc = wl.tokenize([a])
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark (trains the distilled rows on first use, then reads them from the cache)."""
    wl, fp32, ctx = TABLE.setup(data)
    x = ctx.example_inputs
    teacher = copy.deepcopy(fp32).requires_grad_(False)
    b1 = batch1_inputs(wl)

    def warm(model: Any) -> None:
        with torch.inference_mode():
            model(*x)  # compiled rows specialise on the timed shapes here (counted in build_s)
            for ids, mask in b1[:3]:
                model(ids, mask)

    rows = RowBuilder(warm=warm)
    calibration = wl.calibration(8)

    def int8_dynamic() -> tuple[nn.Module, int]:
        m = compress_(wl.model(), recipe_config("int8-dynamic-compiled"), ctx=Context(calibration=calibration))
        return m, artifact_bytes(m)

    def cached(key: str, build: Any) -> Any:
        def make() -> tuple[nn.Module, int]:
            m = _cached(key, wl.factory, lambda: build(wl, teacher))
            return m, artifact_bytes(m)

        return make

    rows.add("fp32", lambda: (fp32, artifact_bytes(fp32)))
    rows.add("torchslim-int8-dynamic", int8_dynamic)
    rows.add("torchslim-distill-3-layers", cached(f"distill-3-layers-{'-'.join(map(str, KEEP))}", build_distill3))
    rows.add("torchslim-edge", cached(_recipe_key("minilm-edge"), build_edge))
    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
        rows.add("peer-onnxruntime-int8", lambda: onnxruntime_int8(fp32, x, tmp))
        rows.add("peer-torchao-int8-dynamic-compiled", lambda: torchao_int8_compiled(fp32))
        rows.add("peer-torch-compile-bf16", lambda: torch_compile_bf16(fp32))
        variants = rows.variants(x, quality=lambda model: lambda: wl.evaluate(model, "test"))
        for v in variants:
            v.extra["dev_spearman"] = round(wl.evaluate(v.model, "dev", with_cos=False)["stsb_spearman"], 2)
        lat = interleaved_latency(
            {v.name: OneByOne(v.model, b1) for v in variants},
            NO_ARGS,
            warmup=1,
            rounds=TABLE.rounds_for(quick) // 2 + 1,
        )
        for v in variants:
            v.extra["speedup_b1"] = round(lat["fp32"].median_ms / lat[v.name].median_ms, 3)
        notes = [
            f"speedup: one batch of {x[0].shape[0]} STS test sentences padded to {x[0].shape[1]} tokens; "
            f"speedup_b1: {len(b1)} STS test sentences one per call at their own length; "
            f"{torch.get_num_threads()} threads, variants interleaved",
            "distillation on the STS train split's sentences only (no gold scores); quality on the test split, "
            "dev_spearman on the dev split",
            "trained rows cached under minilm-edge/ in the torchslim cache ($TORCHSLIM_CACHE or ~/.cache/torchslim)",
            *rows.notes,
        ]
        return TABLE.run(variants, quick, notes)
