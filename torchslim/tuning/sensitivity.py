"""Sensitivity analysis: the metric drop when only one layer (or block) is quantized or pruned.

For every Linear / Conv2d layer (``granularity="layer"``) or every block, i.e. the shortest name prefix
ending in a block index such as ``encoder.layer.3`` (``granularity="block"``), a copy of the model has
only that part compressed, and the workload's metric is measured on one split:

- ``int8``: ``int8-static`` for CNNs (the technique the search uses there), else ``int8-dynamic``;
- ``int4``: ``int4-weight-only`` (round-to-nearest) on Linear layers, when that technique is installed;
- ``prune``: magnitude pruning of the layer's weights at ``ratio`` (per layer, first/last layers included).

The drop is ``baseline - value`` (``value - baseline`` when lower is better): large means sensitive, keep
that layer in higher precision or prune it less. Mixed-precision choices in ``torchslim tune`` are the
same per-group decisions.

Example:
    >>> from torchslim.workloads import get_workload
    >>> result = sensitivity(get_workload("digits"), methods=("int8", "prune"), ratio=0.9, progress=False)
    >>> [r["layer"] for r in result.rows]
    ['features.0', 'features.4', 'features.8', 'classifier']
    >>> result.rows[0]["prune-0.9"] > result.rows[3]["int8"]   # 90% of the first conv matters more
    True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.progress import progress as progress_task
from torchslim.errors import ConfigError, TorchslimError, UsageError
from torchslim.tuning.space import int4_config_type

__all__ = ["METHODS", "SensitivityResult", "block_key", "sensitivity"]

METHODS = ("int8", "int4", "prune")
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_key(name: str) -> str:
    """The block of a qualified name: up to its first numeric component (else the name itself).

    Example:
        >>> block_key("encoder.layer.3.attention.self.query"), block_key("pooler.dense")
        ('encoder.layer.3', 'pooler.dense')
    """
    m = _BLOCK.match(name)
    return m.group(1) if m else name


@dataclass
class SensitivityResult:
    """Rows ``{"layer", "modules", "params", <method>: drop | None}`` and the baseline metric.

    A ``None`` drop means the method does not apply to that layer (e.g. int4 on a convolution) or
    failed; ``notes`` says which.
    """

    workload: str
    metric: str
    split: str
    baseline: float
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"Sensitivity of {self.workload}: {self.metric} drop on the {self.split} split when only one part is "
            f"compressed (baseline {self.baseline:.4f}; larger = more sensitive).",
            "",
            "| layer | params | " + " | ".join(self.columns) + " |",
            "|---|---|" + "---|" * len(self.columns),
        ]
        for r in self.rows:
            cells = ["-" if r.get(c) is None else f"{r[c]:+.4f}" for c in self.columns]
            lines.append(f"| {r['layer']} | {r['params']} | " + " | ".join(cells) + " |")
        lines += [f"\nnote: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``sensitivity.md``, ``sensitivity.json`` and the bar chart ``sensitivity.png`` into ``out``."""
        from torchslim.tuning.plots import bar_chart
        from torchslim.tuning.report import write_text

        out = Path(out)
        paths = {"markdown": out / "sensitivity.md", "json": out / "sensitivity.json", "png": out / "sensitivity.png"}
        write_text(paths["markdown"], self.to_markdown())
        write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        bar_chart(
            paths["png"],
            [r["layer"] for r in self.rows],
            {c: [r.get(c) for r in self.rows] for c in self.columns},
            title=f"{self.workload}: {self.metric} drop when one part is compressed ({self.split})",
            ylabel=f"{self.metric} drop",
        )
        return paths


def _parts(model: nn.Module, granularity: str) -> dict[str, list[tuple[str, nn.Module]]]:
    parts: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, (nn.Linear, nn.Conv2d)):
            key = name if granularity == "layer" else block_key(name)
            parts.setdefault(key, []).append((name, module))
    return parts


def _config(method: str, modules: list[tuple[str, nn.Module]], has_conv: bool, ratio: float) -> Any | None:
    """The config that compresses ``modules`` with ``method``, or None when it does not apply."""
    from torchslim.pruning import MagnitudePruning
    from torchslim.quantization import Int8Dynamic, Int8Static

    if method == "int8":
        if has_conv:
            return Int8Static()
        return Int8Dynamic() if any(isinstance(m, nn.Linear) for _, m in modules) else None
    if method == "int4":
        int4 = int4_config_type()
        linears = [m for _, m in modules if isinstance(m, nn.Linear)]
        if int4 is None or not linears:
            return None
        sizes = [g for g in (128, 64, 32) if all(m.in_features % g == 0 for m in linears)]
        return int4(group_size=sizes[0], method="rtn", progress=False) if sizes else None
    return MagnitudePruning(sparsity=ratio, scope="layer", keep_first_last=False)


def sensitivity(
    workload: str | Any,
    *,
    methods: Sequence[str] = METHODS,
    ratio: float = 0.5,
    granularity: str = "layer",
    split: str | None = None,
    data: str | None = None,
    threads: int = 1,
    progress: bool = True,
    device: str = "cpu",
) -> SensitivityResult:
    """Measure, for each layer or block, the metric drop when only that part is compressed.

    Args:
        workload: a built-in workload name or a :class:`~torchslim.workloads.Workload`.
        methods: among ``int8``, ``int4`` (skipped with a note when not installed) and ``prune``.
        ratio: the fraction of weights magnitude pruning removes from the layer.
        granularity: ``layer`` (every Linear/Conv2d) or ``block`` (see :func:`block_key`).
        split: the split to evaluate; default: the workload's ``selection_split`` (``val`` where it has
            one: choices made from it do not overfit the test split).
        data: the workload's data path. threads: torch threads during the run (restored afterwards).
        progress: show a progress bar. device: where the model runs (``cpu``, ``cuda``).

    Returns:
        A :class:`SensitivityResult` with one row per layer (or block).

    Raises:
        ConfigError: unknown method or granularity, ratio outside (0, 1), or a workload without a quality
            metric (speed only). UsageError: unknown workload.
    """
    from torchslim.api import compress_
    from torchslim.core.select import Select
    from torchslim.workloads import get_workload

    problems = [f"methods: unknown {m!r}; use {', '.join(METHODS)}" for m in methods if m not in METHODS]
    if granularity not in ("layer", "block"):
        problems.append(f"granularity: use 'layer' or 'block', got {granularity!r}")
    if not 0.0 < ratio < 1.0:
        problems.append(f"ratio: a fraction in (0, 1) such as 0.5, got {ratio!r}")
    if problems:
        raise ConfigError("invalid sensitivity options", problems)
    wl = get_workload(workload, data=data) if isinstance(workload, str) else workload
    problem = wl.quality_problem() if hasattr(wl, "quality_problem") else None
    if problem:
        raise ConfigError(f"sensitivity needs a quality metric: {problem}")
    if device != "cpu":
        from torchslim.workloads.device import OnDevice

        wl = OnDevice(wl, device)
    split = split if split is not None else getattr(wl, "selection_split", "val")
    notes = []
    if "int4" in methods and int4_config_type() is None:
        notes.append("int4 skipped: torchslim.quantization.Int4WeightOnly is not installed")
        methods = [m for m in methods if m != "int4"]
    columns = [f"prune-{ratio:g}" if m == "prune" else m for m in methods]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base = wl.model().eval()
        ctx = dataclasses.replace(wl.context(), eval_fn=None)
        has_conv = any(isinstance(m, nn.Conv2d) for m in base.modules())
        sign = 1.0 if wl.higher_is_better else -1.0
        baseline = float(wl.evaluate(base, split)[wl.metric])
        parts = _parts(base, granularity)
        if not parts:
            raise UsageError(f"workload {wl.name!r} has no Linear or Conv2d layers to analyse")
        rows = []
        total = len(parts) * len(methods)
        with progress_task(total, "sensitivity", unit="evaluations", enabled=progress) as bar:
            for key, modules in parts.items():
                row: dict[str, Any] = {
                    "layer": key,
                    "modules": [n for n, _ in modules],
                    "params": sum(p.numel() for _, m in modules for p in m.parameters(recurse=False)),
                }
                select = Select(include=tuple("^" + re.escape(n) + "$" for n, _ in modules))
                for method, column in zip(methods, columns, strict=True):
                    bar.update(status=f"{key} {method}")
                    config = _config(method, modules, has_conv, ratio)
                    row[column] = None
                    if config is not None:
                        try:
                            model = compress_(copy.deepcopy(base), config, select=select, ctx=ctx)
                            row[column] = sign * (baseline - float(wl.evaluate(model.eval(), split)[wl.metric]))
                        except (TorchslimError, RuntimeError, ValueError) as e:
                            notes.append(f"{key} {method}: {type(e).__name__}: {e}"[:300])
                    bar.advance()
                rows.append(row)
    finally:
        torch.set_num_threads(old_threads)
    return SensitivityResult(wl.name, wl.metric, split, baseline, columns, rows, notes)
