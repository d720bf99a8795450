"""Side-by-side benchmarks: ``torchslim bench NAME`` (ours and peers in one process).

Each benchmark module declares a :class:`~torchslim.bench.harness.BenchTable` (``TABLE``: rows, columns,
workload, recipe rows) and a ``bench(data, quick)`` that builds its rows over the shared harness
(:mod:`torchslim.bench.harness` says how to add one).

Example:
    >>> "digits" in benchmark_names()
    True
    >>> table("digits").workload
    'digits'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torchslim.bench.harness import BenchResult, BenchTable, Variant, run_benchmark
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
    "minilm-edge": "torchslim.bench.minilm_edge:bench",
    "fsdd-kws": "torchslim.bench.fsdd:bench",
    "digits-tune": "torchslim.bench.tune_digits:bench",
    "minilm-tune": "torchslim.bench.tune_minilm:bench",
    "llama-decode": "torchslim.bench.llama:bench",
    "llama-sequential": "torchslim.bench.llama_sequential:bench",
    "distill-fsdp": "torchslim.bench.distill_fsdp:bench",
    "shakespeare-gpt": "torchslim.bench.shakespeare:bench",
    "vision-speed": "torchslim.bench.vision_speed:bench",
}


def benchmark_names() -> list[str]:
    return list(BENCHMARKS)


def _check_name(name: str) -> None:
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; valid benchmarks: {', '.join(BENCHMARKS)}")


def bench_module(name: str) -> Any:
    """The module of benchmark ``name`` (its ``TABLE`` and ``bench``); UsageError lists the valid names."""
    _check_name(name)
    return import_module(BENCHMARKS[name].partition(":")[0])


def table(name: str) -> BenchTable:
    """The declared table of benchmark ``name``; UsageError lists the valid names."""
    return bench_module(name).TABLE


def run_named_benchmark(name: str, data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark called ``name`` and check its rows against its table; UsageError lists the valid names."""
    module = bench_module(name)
    result = getattr(module, BENCHMARKS[name].partition(":")[2])(data=data, quick=quick)
    return module.TABLE.check(result)


__all__ = [
    "BENCHMARKS",
    "BenchResult",
    "BenchTable",
    "Variant",
    "bench_module",
    "benchmark_names",
    "run_benchmark",
    "run_named_benchmark",
    "table",
]
