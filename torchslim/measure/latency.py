"""Latency under ``torch.inference_mode()``: warm-up, then median and p90 over N runs.

On a shared machine absolute times are noisy; compare variants with :func:`interleaved_latency`,
which runs them round-robin in one process so drift hits all of them alike.

Example:
    >>> import torch, torch.nn as nn
    >>> lat = measure_latency(nn.Linear(8, 8), (torch.zeros(1, 8),), warmup=1, runs=5)
    >>> lat.runs
    5
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.batches import model_inputs


@dataclass(frozen=True)
class Latency:
    """Latency figures in milliseconds with the conditions they were taken under."""

    median_ms: float
    p90_ms: float
    runs: int
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _device_of(model: nn.Module) -> str:
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return str(p.device) if p is not None else "cpu"


def _bound(model: Callable[..., Any], example_inputs: Any) -> Callable[[], Any]:
    """``model`` with its inputs bound, for timing without per-call input mapping."""
    inputs = model_inputs(model, example_inputs)
    return functools.partial(model, *inputs.args, **inputs.kwargs)


def measure_latency(model: nn.Module, example_inputs: Any, *, warmup: int = 5, runs: int = 30) -> Latency:
    """Time ``model`` on ``example_inputs``; returns median and p90 in ms, threads and device.

    ``example_inputs`` is a tuple of positional inputs, a dict of keyword inputs (a tokenizer's
    output) or a tensor, passed as :func:`torchslim.core.batches.call_model` reads them.
    """
    return interleaved_latency({"model": model}, {"model": example_inputs}, warmup=warmup, rounds=runs)["model"]


def interleaved_latency(
    models: Mapping[str, nn.Module | Callable[..., Any]],
    example_inputs: Any,
    *,
    warmup: int = 5,
    rounds: int = 30,
    calls_per_round: int = 1,
) -> dict[str, Latency]:
    """Time several variants round-robin in one process.

    Args:
        models: name -> model (or any callable taking the inputs).
        example_inputs: inputs for all (a tuple of positional inputs, a dict of keyword inputs, a
            tensor), or name -> inputs: a mapping whose keys are exactly the names of ``models``.
        warmup: untimed calls per variant first.
        rounds: timed rounds; each round calls every variant ``calls_per_round`` times in turn.

    Returns:
        name -> Latency (median and p90 over the rounds, each sample the mean of the round's calls).
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    per_variant = isinstance(example_inputs, Mapping) and set(example_inputs) == set(models)
    # Mapped once, outside the timed loop: a timed call is the bare model call.
    calls = {name: _bound(m, example_inputs[name] if per_variant else example_inputs) for name, m in models.items()}
    devices = {name: _device_of(m) if isinstance(m, nn.Module) else "cpu" for name, m in models.items()}
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(warmup):
                call()
        for _ in range(rounds):
            for name in models:
                call = calls[name]
                t = _timed(lambda call=call: [call() for _ in range(calls_per_round)], devices[name])
                samples[name].append(t / calls_per_round)
    threads = torch.get_num_threads()
    return {name: Latency(statistics.median(s), _p90(s), len(s), threads, devices[name]) for name, s in samples.items()}


def relative_latency(model: nn.Module, base: nn.Module, example_inputs: Any, baseline_ms: float,
                     runs: int, *, warmup: int = 3) -> dict[str, float]:  # fmt: skip
    """Time ``model`` round-robin with the baseline model ``base`` in one call; its load-independent latency.

    Both are timed in the same rounds (:func:`interleaved_latency`), so a change of the machine's load
    during or before the call slows both alike and cancels in their ratio. ``torchslim tune`` times every
    trial this way.

    Returns:
        ``speedup``: the baseline's median / ``model``'s median in this call; ``latency_ms``: ``baseline_ms``
        (the baseline's latency measured at the start of the run) / ``speedup``, comparable across trials
        timed under different loads; ``raw_latency_ms`` and ``baseline_raw_ms``: the two medians as measured.

    Example:
        >>> import torch.nn as nn
        >>> r = relative_latency(nn.Linear(8, 8), nn.Linear(8, 8), (torch.zeros(1, 8),), 1.0, runs=3, warmup=1)
        >>> sorted(r)
        ['baseline_raw_ms', 'latency_ms', 'raw_latency_ms', 'speedup']
        >>> abs(r["latency_ms"] - r["raw_latency_ms"] / r["baseline_raw_ms"]) < 1e-9
        True
    """
    lat = interleaved_latency({"model": model, "baseline": base}, example_inputs, warmup=warmup, rounds=runs)
    raw, ref = lat["model"].median_ms, lat["baseline"].median_ms
    # A model faster than the clock resolves (median 0) is reported as the clock's limit, not as infinitely fast.
    tiny = 1e-9
    speedup = max(ref, tiny) / max(raw, tiny)
    return {"latency_ms": baseline_ms / speedup, "speedup": speedup, "raw_latency_ms": raw, "baseline_raw_ms": ref}
