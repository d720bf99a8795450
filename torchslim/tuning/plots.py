"""Small PNG charts with matplotlib's object API (``Figure`` + Agg canvas: no pyplot, no global backend).

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "bars.png")
    >>> bar_chart(path, ["a", "b"], {"int8": [0.01, 0.0]}, title="drop", ylabel="accuracy drop")
    >>> open(path, "rb").read(4) == b"\\x89PNG"
    True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bar_chart", "pareto_chart", "save_png"]

DPI = 80  # keeps the committed PNGs small (tens of KB)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path) -> None:
    """Write ``fig`` as PNG atomically (temporary file beside ``path``, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def bar_chart(
    path: str | Path, labels: Sequence[str], series: dict[str, Sequence[float]], *, title: str, ylabel: str
) -> None:
    """Grouped bars: one group per label, one bar per series (e.g. per-layer metric drop per method)."""
    n = max(1, len(series))
    fig = _figure(max(5.0, 0.45 * len(labels) * n + 1.5), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [0.0 if v is None else v for v in values], width=width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.tick_params(axis="x", labelsize=7)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)


def pareto_chart(
    path: str | Path,
    *,
    trials: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    references: Sequence[dict[str, Any]],
    baseline: dict[str, Any],
    metric: str,
    budget: float,
    title: str,
) -> None:
    """Quality against size (KB, log) and against latency (ms): trials, their front, references, budget.

    Args:
        trials: dicts with ``size_bytes``, ``latency_ms``, ``quality``, ``feasible``.
        front: the feasible trials to draw as the front (connected, by size).
        references: dicts with ``name``, ``size_bytes``, ``latency_ms``, ``quality``, optional ``kind``
            (``"builtin"`` or ``"peer"``).
        baseline: dict with ``size_bytes``, ``latency_ms``, ``quality``.
        budget: the quality line (baseline minus the allowed drop, in the metric's direction).
    """
    fig = _figure(10.0, 4.0)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    for ax, key, label in zip(axes, ("size_bytes", "latency_ms"), ("size (KB, log)", "latency (ms)"), strict=True):
        scale = 1e-3 if key == "size_bytes" else 1.0

        def xs(rows: Sequence[dict[str, Any]], key: str = key, scale: float = scale) -> list[float]:
            return [r[key] * scale for r in rows]

        feas = [t for t in trials if t.get("feasible")]
        infeas = [t for t in trials if not t.get("feasible")]
        ax.scatter(
            xs(infeas), [t["quality"] for t in infeas], s=14, c="#bbbbbb", marker="x", label="trial (over budget)"
        )
        ax.scatter(xs(feas), [t["quality"] for t in feas], s=18, c="#1f77b4", label="trial (within budget)")
        ordered = sorted(front, key=lambda r: r[key])
        if ordered:
            ax.plot(xs(ordered), [t["quality"] for t in ordered], c="#1f77b4", linewidth=1.0, label="tuned front")
            ax.scatter(xs(ordered), [t["quality"] for t in ordered], s=40, facecolors="none", edgecolors="#d62728")
        for ref in references:
            peer = ref.get("kind") == "peer"
            ax.scatter([ref[key] * scale], [ref["quality"]], s=34, marker="^" if peer else "s",
                       c="#2ca02c" if peer else "#ff7f0e")  # fmt: skip
            ax.annotate(ref["name"], (ref[key] * scale, ref["quality"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
        ax.scatter([baseline[key] * scale], [baseline["quality"]], s=90, marker="*", c="black", label="baseline")
        ax.axhline(budget, color="#d62728", linestyle="--", linewidth=0.8, label="budget")
        if key == "size_bytes":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        qs = [t["quality"] for t in feas] + [baseline["quality"], budget]
        qs += [r["quality"] for r in references if r["quality"] >= budget - 3 * abs(baseline["quality"] - budget)]
        span = max(qs) - min(qs) or 1.0
        ax.set_ylim(min(qs) - 0.6 * span, max(qs) + 0.2 * span)  # zoom on the budget; collapsed trials fall below
    axes[0].scatter([], [], s=34, marker="s", c="#ff7f0e", label="built-in recipe")
    if any(r.get("kind") == "peer" for r in references):
        axes[0].scatter([], [], s=34, marker="^", c="#2ca02c", label="peer (bench, test split)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)
