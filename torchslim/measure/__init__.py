"""Measurement: params, non-zeros, artifact size, MACs, latency, quality, and the Report.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.core.context import Context
    >>> r = measure(nn.Linear(4, 2), Context(example_inputs=(torch.zeros(1, 4),)), latency_runs=3)
    >>> r.params, r.macs
    (10, 8)
"""

from __future__ import annotations

import torch.nn as nn

from torchslim.core.context import Context
from torchslim.measure.latency import Latency, interleaved_latency, measure_latency, relative_latency
from torchslim.measure.macs import count_macs
from torchslim.measure.report import Report, print_table, to_markdown
from torchslim.measure.size import artifact_bytes, count_nonzero, count_params, state_dict_bytes


def measure(
    model: nn.Module,
    ctx: Context | None = None,
    *,
    latency_runs: int = 30,
    warmup: int = 5,
    quality: bool = True,
) -> Report:
    """Measure ``model``: params, non-zeros, artifact size, and with ``ctx`` MACs, latency and quality.

    Args:
        model: the model (put in eval mode for the measurement, then restored).
        ctx: example inputs (for MACs and latency) and eval function (for quality).
        latency_runs: timed runs (0 skips latency).
        quality: run ``ctx.eval_fn`` when present.
    """
    was_training = model.training
    model.eval()
    try:
        fields: dict = {
            "params": count_params(model),
            "nonzero": count_nonzero(model),
            "size_bytes": artifact_bytes(model),
        }
        if ctx is not None and ctx.example_inputs is not None:
            fields["macs"] = count_macs(model, ctx.example_inputs, per_sample=True)
            if latency_runs > 0:
                lat = measure_latency(model, ctx.example_inputs, warmup=warmup, runs=latency_runs)
                fields.update(
                    latency_ms=lat.median_ms, latency_p90_ms=lat.p90_ms, threads=lat.threads, device=lat.device
                )
        if quality and ctx is not None and ctx.eval_fn is not None:
            fields["quality"] = {k: float(v) for k, v in ctx.eval_fn(model).items()}
        return Report(**fields)
    finally:
        model.train(was_training)


__all__ = [
    "Latency",
    "Report",
    "artifact_bytes",
    "count_macs",
    "count_nonzero",
    "count_params",
    "interleaved_latency",
    "measure",
    "measure_latency",
    "print_table",
    "relative_latency",
    "state_dict_bytes",
    "to_markdown",
]
