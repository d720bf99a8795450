"""``torchslim bench llama-sequential``: int4 GPTQ of a 3 B LLaMA block by block, in bounded memory.

The models are seeded random LLaMA-shaped bf16 Hugging Face folders written once into the torchslim
cache (:mod:`torchslim.bench.llama_sequential_model`): OpenLLaMA-3B's shape with a 128-multiple MLP
(3.44 B parameters, 13.8 GB in float32) and a 542 M one small enough for the in-memory path. Every
compression and every decode runs in a child process of its own (:mod:`torchslim.bench.llama_sequential_child`), so each row's
``peak_rss_mb`` is that process's peak resident set alone (imports included). The recipe is the built-in
``int4-g128`` (int4 weight-only, groups of 128, GPTQ); the calibration set is 2 batches of 128 seeded
random token ids (2 batches of 16 with ``--quick``). The calibration size barely matters to the time:
GPTQ's float64 solve of each layer grows with its outputs × inputs², so the 3 B run takes CPU-hours
on a few cores where the 542 M one takes CPU-minutes.

Rows (``params`` tells the two models apart):

- ``fp32``: the 542 M source loaded whole in float32 and decoded (the baseline of ``speedup``);
- ``torchslim-int4-gptq-g128-in-memory-small`` and ``torchslim-int4-gptq-g128-sequential-small``: the
  542 M model through each path; ``same_artifact`` is whether the two artifacts hold the same tensors
  (every tensor of ``model.safetensors`` bit for bit, and the same ``structure.json``);
- ``torchslim-int4-gptq-g128-sequential``: the 3 B model through ``compress_sequential``;
- ``torchslim-int4-gptq-g128-in-memory``: the 3 B model loaded whole, only where a preflight finds
  room for it (twice the model in its bf16 load dtype: the model and its compressed copy, within the
  memory available or ``TORCHSLIM_MAX_MODEL_BYTES``); otherwise left out with a note saying what it needs.

Columns: ``build_s`` (the compression's wall time in its child), ``peak_rss_mb`` (of the compressing
child; of the decoding child for ``fp32``), ``latency_ms`` (one call: an 8-token prompt plus
``new_tokens`` greedy tokens at batch 1, median), ``tokens_per_s`` (generated tokens per second of that
call), ``size_mb`` (the artifact's files; fp32: 4 bytes a parameter). ``speedup`` is over ``fp32`` for the
542 M rows; it is empty for the 3 B rows (their fp32 model is not loaded). The artifacts are loaded for
decoding with a factory that builds the uncompressed model uninitialised in bf16
(:func:`~torchslim.bench.llama_sequential_child.artifact_factory`).

``--data`` names a folder for the models instead of the cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from torchslim.bench.harness import BenchResult, BenchTable
from torchslim.bench.llama_sequential_child import run_child
from torchslim.bench.llama_sequential_model import FULL, QUICK_FULL, QUICK_SMALL, SMALL, llama_folder
from torchslim.workloads.llama import LlamaSpec

__all__ = ["RECIPE", "TABLE", "bench", "in_memory_need_bytes", "same_artifact"]

RECIPE = "int4-g128"
SEQUENTIAL, IN_MEMORY = "torchslim-int4-gptq-g128-sequential", "torchslim-int4-gptq-g128-in-memory"
SMALL_IN_MEMORY, SMALL_SEQUENTIAL = f"{IN_MEMORY}-small", f"{SEQUENTIAL}-small"

TABLE = BenchTable(
    name="llama-sequential",
    workload="llama-decode",
    rows=("fp32", SMALL_IN_MEMORY, SMALL_SEQUENTIAL, SEQUENTIAL, IN_MEMORY),
    metrics=(),
    columns=("params", "peak_rss_mb", "tokens_per_s", "build_s", "same_artifact"),
    optional=(IN_MEMORY,),
)


def same_artifact(a: Path, b: Path) -> bool:
    """Whether two artifacts hold the same tensors (names, dtypes, shapes, bits) and the same structure log.

    Compared one tensor at a time through memory-mapped reads, so neither artifact is loaded whole.
    """
    from safetensors import safe_open

    if (a / "structure.json").read_bytes() != (b / "structure.json").read_bytes():
        return False
    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        if sorted(fa.keys()) != sorted(fb.keys()):
            return False
        for name in fa.keys():  # noqa: SIM118 - safe_open is not a mapping
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
                return False
    return True


def in_memory_need_bytes(shape: LlamaSpec) -> int:
    """What the in-memory path needs at least: the model in bf16 (its load dtype) and its compressed copy,
    taken as a second bf16 model (the int4 copy is smaller, but saving serialises it once more)."""
    return 2 * 2 * shape.params()


def _files_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


class _Plan:
    """The runs of one benchmark: shapes, calibration and decode sizes, and the output folder."""

    def __init__(self, quick: bool, root: Path | None, out: Path) -> None:
        self.quick, self.root, self.out = quick, root, out
        self.large, self.small = (QUICK_FULL, QUICK_SMALL) if quick else (FULL, SMALL)
        self.batches, self.tokens = (2, 16) if quick else (2, 128)
        self.prompt, self.new_tokens, self.runs = (8, 4, 1) if quick else (8, 8, 2)

    def folder(self, shape: LlamaSpec) -> Path:
        return llama_folder(shape, root=self.root)

    def compress(self, task: str, shape: LlamaSpec, name: str) -> tuple[dict[str, Any], Path]:
        out = self.out / name
        spec = {"task": task, "path": str(self.folder(shape)), "out": str(out), "recipe": RECIPE}
        spec |= {"vocab": shape.vocab, "batches": self.batches, "tokens": self.tokens}
        return run_child(spec), out

    def decode(self, path: Path, fp32: bool = False) -> dict[str, Any]:
        spec = {"task": "decode", "path": str(path), "fp32": fp32, "prompt": self.prompt}
        return run_child(spec | {"new_tokens": self.new_tokens, "runs": self.runs})


def _row(variant: str, built: dict[str, Any], decoded: dict[str, Any], size_mb: float, base_ms: float | None) -> dict:
    row: dict[str, Any] = {
        "variant": variant,
        "latency_ms": round(decoded["latency_ms"], 1),
        "latency_p90_ms": None,
        "speedup": None if base_ms is None else round(base_ms / decoded["latency_ms"], 2),
        "size_mb": round(size_mb, 1),
        "quality": {},
        "params": decoded["params"],
    }
    if "build_s" in built:
        row["build_s"] = round(built["build_s"], 1)
    row["peak_rss_mb"] = round(built["peak_rss_mb"], 1)
    row["tokens_per_s"] = round(decoded["tokens_per_s"], 2)
    return row


def _run(plan: _Plan) -> BenchResult:
    from torchslim.io.config_bound import model_byte_limit

    small, large = plan.small, plan.large
    notes = [
        f"models: seeded random LLaMA, bf16 Hugging Face folders: {large.describe()} and {small.describe()}",
        f"recipe {RECIPE} (int4 weight-only, group 128, GPTQ); calibration: {plan.batches} batches of "
        f"{plan.tokens} seeded random token ids; decode: {plan.prompt}-token prompt + {plan.new_tokens} greedy "
        f"tokens at batch 1, median of {plan.runs} calls after a warm-up; {torch.get_num_threads()} threads",
    ]
    start_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    fp32 = plan.decode(plan.folder(small), fp32=True)
    rows = [_row("fp32", fp32, fp32, 4 * fp32["params"] / 1e6, fp32["latency_ms"])]
    artifacts = {}
    for name, task in ((SMALL_IN_MEMORY, "in-memory"), (SMALL_SEQUENTIAL, "sequential")):
        built, artifacts[name] = plan.compress(task, small, name)
        rows.append(_row(name, built, plan.decode(artifacts[name]), _files_mb(artifacts[name]), fp32["latency_ms"]))
    rows[-1]["same_artifact"] = same_artifact(artifacts[SMALL_IN_MEMORY], artifacts[SMALL_SEQUENTIAL])
    built, out = plan.compress("sequential", large, SEQUENTIAL)
    rows.append(_row(SEQUENTIAL, built, plan.decode(out), _files_mb(out), None))
    need, limit = in_memory_need_bytes(large), model_byte_limit()
    if need <= limit:
        built, out = plan.compress("in-memory", large, IN_MEMORY)
        rows.append(_row(IN_MEMORY, built, plan.decode(out), _files_mb(out), None))
    else:
        env = os.environ.get("TORCHSLIM_MAX_MODEL_BYTES", "")
        bound = "TORCHSLIM_MAX_MODEL_BYTES" if env.isdigit() and int(env) == limit else "memory available"
        notes.append(
            f"{IN_MEMORY} not run: needs about {need / 1e9:.1f} GB (the bf16 model and its compressed copy), over "
            f"the {limit / 1e9:.1f} GB bound ({bound} when the run started)"
        )
    fp32_gb = 4 * large.params() / 1e9
    notes.append(
        f"{SEQUENTIAL}: peak {rows[3]['peak_rss_mb'] / 1e3:.2f} GB = {rows[3]['peak_rss_mb'] / 1e3 / fp32_gb:.3f}x "
        f"the model's float32 size ({fp32_gb:.1f} GB); peak_rss_mb of each compressing child process"
    )
    if hasattr(os, "getloadavg"):  # other processes share the cores: every figure above is measured beside them
        notes.append(f"load average {start_load:.1f} when the run started, {os.getloadavg()[0]:.1f} when it ended")
    return BenchResult(TABLE.name, rows, notes=notes)


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark; ``quick`` uses tiny shapes (``--data``: a folder for the models, default the cache)."""
    with tempfile.TemporaryDirectory(prefix="torchslim-llama-sequential-") as tmp:
        result = _run(_Plan(quick, Path(data) if data else None, Path(tmp)))
    return TABLE.check(result)
