"""Side-by-side benchmarks: ``torchslim bench NAME`` (ours and peers in one process).

Example:
    >>> "digits" in benchmark_names()
    True
"""

from __future__ import annotations

from importlib import import_module

from torchslim.bench.harness import BenchResult, Variant, run_benchmark
from torchslim.errors import UsageError

# name -> "module:function(data, quick) -> BenchResult"; imported lazily so optional peers load only when run.
BENCHMARKS: dict[str, str] = {
    "digits": "torchslim.bench.digits:bench",
    "minilm-stsb": "torchslim.bench.minilm:bench",
    "digits-structured": "torchslim.bench.digits_structured:bench",
    "minilm-structured": "torchslim.bench.minilm_structured:bench",
    "digits-kd": "torchslim.bench.digits_kd:bench",
    "minilm-kd": "torchslim.bench.minilm_kd:bench",
    "digits-prune": "torchslim.bench.digits_prune:bench",
    "minilm-prune": "torchslim.bench.minilm_prune:bench",
    "fsdd-kws": "torchslim.bench.fsdd:bench",
    "digits-tune": "torchslim.bench.tune_digits:bench",
    "minilm-tune": "torchslim.bench.tune_minilm:bench",
    "llama-decode": "torchslim.bench.llama:bench",
    "shakespeare-gpt": "torchslim.bench.shakespeare:bench",
}


def benchmark_names() -> list[str]:
    return list(BENCHMARKS)


def run_named_benchmark(name: str, data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark called ``name``; UsageError lists the valid names."""
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; valid benchmarks: {', '.join(BENCHMARKS)}")
    module, _, fn = BENCHMARKS[name].partition(":")
    return getattr(import_module(module), fn)(data=data, quick=quick)


__all__ = ["BENCHMARKS", "BenchResult", "Variant", "benchmark_names", "run_benchmark", "run_named_benchmark"]
