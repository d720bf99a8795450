"""``Report``: the measured figures of one model, with ``diff``, ``to_dict``, ``to_markdown`` and a rich table.

Example:
    >>> a = Report(params=100, nonzero=100, size_bytes=4000, macs=50, quality={"accuracy": 0.98})
    >>> b = Report(params=50, nonzero=50, size_bytes=1000, macs=20, quality={"accuracy": 0.97})
    >>> b.diff(a)["size_ratio"]
    0.25
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Report:
    """Measured figures of a model; fields that were not measured are None.

    Attributes:
        params: parameter elements. nonzero: non-zero parameter elements.
        size_bytes: bytes of the artifact's tensors. macs: multiply-accumulates per sample.
        latency_ms / latency_p90_ms: median / p90 of one forward on the example inputs.
        threads, device: conditions of the latency measurement.
        quality: the workload's metrics (e.g. ``{"accuracy": 0.981}``).
    """

    params: int | None = None
    nonzero: int | None = None
    size_bytes: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    threads: int | None = None
    device: str | None = None
    quality: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def diff(self, baseline: Report) -> dict[str, float | None]:
        """Ratios against ``baseline`` (``size_ratio`` 0.25 = 4× smaller, ``speedup`` 2.0 = 2× faster)
        and the change of every quality metric (``delta_<metric>``)."""

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if a is None or not b else a / b

        out: dict[str, float | None] = {
            "params_ratio": ratio(self.params, baseline.params),
            "nonzero_ratio": ratio(self.nonzero, baseline.nonzero),
            "size_ratio": ratio(self.size_bytes, baseline.size_bytes),
            "macs_ratio": ratio(self.macs, baseline.macs),
            "speedup": ratio(baseline.latency_ms, self.latency_ms),
        }
        for k, v in self.quality.items():
            if k in baseline.quality:
                out[f"delta_{k}"] = v - baseline.quality[k]
        return out


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _fmt_quality(v: float) -> str:
    return f"{v:.4f}" if abs(v) <= 1.0 else f"{v:.2f}"


def _columns(rows: Sequence[tuple[str, Report]]) -> tuple[list[str], list[list[str]]]:
    metrics: list[str] = []
    for _, r in rows:
        metrics += [k for k in r.quality if k not in metrics]
    header = ["model", "params", "non-zero", "size", "MACs", "latency ms (p90)", *metrics]
    base = rows[0][1] if rows else None
    body = []
    for name, r in rows:
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.3f}"
        if r.latency_p90_ms is not None:
            lat += f" ({r.latency_p90_ms:.3f})"
        size = _fmt_size(r.size_bytes)
        if base is not None and r is not base and r.size_bytes and base.size_bytes:
            size += f" ({base.size_bytes / r.size_bytes:.1f}x)"
        if base is not None and r is not base and r.latency_ms and base.latency_ms:
            lat += f" {base.latency_ms / r.latency_ms:.2f}x"
        q = [_fmt_quality(r.quality[m]) if m in r.quality else "-" for m in metrics]
        body.append([name, _fmt_int(r.params), _fmt_int(r.nonzero), size, _fmt_int(r.macs), lat, *q])
    return header, body


def to_markdown(rows: Sequence[tuple[str, Report]]) -> str:
    """A Markdown table of named reports; the first row is the baseline for the ratios."""
    header, body = _columns(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def print_table(rows: Sequence[tuple[str, Report]], title: str = "", console: Any = None) -> None:
    """Print named reports as a rich table (first row = baseline for the ratios)."""
    from rich.console import Console
    from rich.table import Table

    header, body = _columns(rows)
    table = Table(title=title or None)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    (console or Console()).print(table)
