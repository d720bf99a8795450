"""Benchmark harness: variants timed round-robin in one process, a table, and the JSON of DESIGN.md.

Variant names: ``fp32`` is the baseline, ours start with ``torchslim-``, peers with ``peer-``; every
``speedup`` is the fp32 median latency over the variant's, measured in the same run.

Example:
    >>> import torch, torch.nn as nn
    >>> x = (torch.zeros(4, 8),)
    >>> res = run_benchmark("toy", [Variant("fp32", nn.Linear(8, 8), x, quality={"q": 1.0})], rounds=3, warmup=1)
    >>> res.rows[0]["speedup"]
    1.0
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchslim.measure.latency import interleaved_latency

PREFIXES = ("torchslim-", "peer-")


@dataclass
class Variant:
    """One row of a benchmark.

    Args:
        name: ``fp32``, ``torchslim-...`` or ``peer-...``.
        model: a module or callable taking ``*inputs``.
        inputs: positional inputs for the timed call.
        size_bytes: artifact size (None when not meaningful).
        quality: metrics, or a zero-argument callable computing them (evaluated once, untimed).
        extra: further row keys (``params``, ``macs``, ...).
    """

    name: str
    model: Callable[..., Any]
    inputs: tuple[Any, ...]
    size_bytes: int | None = None
    quality: dict[str, float] | Callable[[], dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name != "fp32" and not self.name.startswith(PREFIXES):
            raise ValueError(f"variant name {self.name!r} must be 'fp32' or start with 'torchslim-' or 'peer-'")


def model_variant(
    name: str,
    model: Any,
    inputs: tuple[Any, ...],
    quality: dict[str, float] | Callable[[], dict[str, float]],
    *,
    size_bytes: int | None = None,
    measures: Sequence[str] = ("params",),
    extra: dict[str, Any] | None = None,
) -> Variant:
    """A model's row: eval mode, its artifact size (unless ``size_bytes``), and the named ``measures``.

    ``measures``: any of ``params``, ``macs`` (per sample) and ``nonzero``; ``extra``: further keys.

    Example:
        >>> import torch, torch.nn as nn
        >>> v = model_variant("fp32", nn.Linear(8, 2), (torch.zeros(1, 8),), {"q": 1.0}, measures=("params", "macs"))
        >>> v.extra, v.size_bytes > 0
        ({'params': 18, 'macs': 16}, True)
    """
    from torchslim.measure import artifact_bytes, count_macs, count_nonzero, count_params

    model.eval()
    known = {
        "params": lambda: count_params(model),
        "macs": lambda: count_macs(model, inputs, per_sample=True),
        "nonzero": lambda: count_nonzero(model),
    }
    unknown = set(measures) - set(known)
    if unknown:
        raise ValueError(f"unknown measures {sorted(unknown)}; choose from {sorted(known)}")
    row = {key: known[key]() for key in measures} | (extra or {})
    size = artifact_bytes(model) if size_bytes is None else size_bytes
    return Variant(name, model, inputs, size_bytes=size, quality=quality, extra=row)


def recipe_config(name: str) -> Any:
    """The technique config of the one-step built-in recipe ``name``.

    A benchmark row built with this config is the row ``torchslim compress --recipe NAME`` reproduces: the
    bench and the command read the same YAML file (list such rows in the bench module's ``RECIPES``).

    Example:
        >>> recipe_config("bf16")
        CastDtype(dtype='bfloat16')
    """
    from importlib import resources

    from torchslim.recipes import load_recipe

    with resources.as_file(resources.files("torchslim.recipes") / "builtin" / f"{name}.yaml") as path:
        steps = load_recipe(path).steps  # its own file only: a broken neighbour cannot stop this bench
    if len(steps) != 1 or steps[0].select is not None:
        raise ValueError(f"built-in recipe {name!r} is not one step on the whole model; run it with run_recipe")
    return steps[0].config


@dataclass
class BenchResult:
    """A benchmark's rows in the DESIGN.md schema."""

    benchmark: str
    rows: list[dict[str, Any]]
    device: str = "cpu"
    torch_version: str = torch.__version__
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "device": self.device,
            "torch": self.torch_version,
            "threads": torch.get_num_threads(),
            "rows": self.rows,
            "notes": self.notes,
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def to_markdown(self) -> str:
        header, body = self._table()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)

    def _table(self) -> tuple[list[str], list[list[str]]]:
        metrics: list[str] = []
        extras: list[str] = []
        for r in self.rows:
            metrics += [k for k in r["quality"] if k not in metrics]
            extras += [k for k in r if k not in _ROW_KEYS and k not in extras]
        header = ["variant", "latency ms", "speedup", "size MB", *metrics, *extras]
        body = []
        for r in self.rows:
            q = [f"{r['quality'][m]:.4f}" if m in r["quality"] else "-" for m in metrics]
            e = [str(r.get(k, "-")) for k in extras]
            size = "-" if r["size_mb"] is None else f"{r['size_mb']:.4f}"
            body.append([r["variant"], f"{r['latency_ms']:.3f}", f"{r['speedup']:.2f}x", size, *q, *e])
        return header, body

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        header, body = self._table()
        table = Table(
            title=f"bench {self.benchmark} ({self.device}, torch {self.torch_version}, {torch.get_num_threads()} threads)"
        )
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in body:
            table.add_row(*r)
        console = console or Console()
        console.print(table)
        for n in self.notes:
            console.print(f"note: {n}", markup=False)  # notes hold recipe text such as "[fc:8]"


_ROW_KEYS = {"variant", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "quality"}


def run_benchmark(
    name: str,
    variants: Sequence[Variant],
    *,
    rounds: int = 30,
    warmup: int = 5,
    calls_per_round: int = 1,
    device: str = "cpu",
) -> BenchResult:
    """Evaluate every variant's quality, then time all of them interleaved; ``fp32`` must be among them."""
    names = [v.name for v in variants]
    if "fp32" not in names:
        raise ValueError("a benchmark needs an 'fp32' baseline variant")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names in {names}")
    quality = {v.name: (v.quality() if callable(v.quality) else dict(v.quality)) for v in variants}
    lat = interleaved_latency(
        {v.name: v.model for v in variants},
        {v.name: v.inputs for v in variants},
        warmup=warmup,
        rounds=rounds,
        calls_per_round=calls_per_round,
    )
    base = lat["fp32"].median_ms
    rows = []
    for v in variants:
        row = {
            "variant": v.name,
            "latency_ms": lat[v.name].median_ms,
            "latency_p90_ms": lat[v.name].p90_ms,
            "speedup": base / lat[v.name].median_ms,
            "size_mb": None if v.size_bytes is None else v.size_bytes / 1e6,
            "quality": {k: float(x) for k, x in quality[v.name].items()},
        }
        row.update(v.extra)
        rows.append(row)
    return BenchResult(name, rows, device=device or platform.machine())
