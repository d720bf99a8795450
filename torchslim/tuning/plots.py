"""Small PNG charts with matplotlib's object API (``Figure`` + Agg canvas: no pyplot, no global backend).

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "bars.png")
    >>> bar_chart(path, ["a", "b"], {"int8": [0.01, 0.0]}, title="drop", ylabel="accuracy drop")
    >>> open(path, "rb").read(4) == b"\\x89PNG"
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchslim.io.atomic import atomic_file

__all__ = ["bar_chart", "label_points", "log_ticks", "pareto_chart", "save_png", "set_log_axis"]

DPI = 80  # keeps the committed PNGs small (tens of KB)
_MANTISSAS = (
    (1.0,),
    (1.0, 2.0, 5.0),
    (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
    (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0),
)


def new_figure(width: float, height: float) -> Any:
    """A ``width`` x ``height`` inch matplotlib figure on the Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, colors: int | None = None) -> None:
    """Write ``fig`` as PNG atomically (:func:`torchslim.io.atomic.atomic_file`); ``colors``: quantize to
    a palette of that many colours (Pillow; a third of the bytes for a chart of flat colours and text)."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        if colors:
            from PIL import Image

            with Image.open(tmp) as image:
                quantized = image.convert("RGB").quantize(colors=colors)
            quantized.save(tmp, format="PNG", optimize=True)


def log_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round tick values for a log axis from ``lo`` to ``hi``: the finest of 1 / 1-2-5 / 1-1.5-2-3-5-7 / ...
    per decade giving at most ``max_ticks`` (at least 2 where any set can), thinned to ``max_ticks``.

    Example:
        >>> log_ticks(0.006, 0.4)
        [0.01, 0.02, 0.05, 0.1, 0.2]
        >>> log_ticks(69.0, 90.3)
        [70.0, 80.0, 90.0]
        >>> log_ticks(0.001, 5000.0)  # 7 decades: every other one
        [0.001, 0.1, 10.0, 1000.0]
    """
    import math

    def ticks(mantissas: tuple[float, ...]) -> list[float]:
        out = []
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
            out += [float(f"{m * 10.0**e:.6g}") for m in mantissas if lo <= m * 10.0**e <= hi]
        return out

    candidates = [ticks(m) for m in _MANTISSAS]
    fitting = [t for t in candidates if 2 <= len(t) <= max_ticks]
    if fitting:
        return fitting[-1]
    best = candidates[0] if len(candidates[0]) >= 2 else next((t for t in candidates if len(t) >= 2), candidates[-1])
    step = max(1, math.ceil(len(best) / max_ticks))
    return best[::step]


def set_log_axis(ax: Any, values: Sequence[float], axis: str = "x", pad: float = 1.25, max_ticks: int = 6) -> None:
    """A log ``axis`` spanning ``values`` (times/divided by ``pad``) with :func:`log_ticks` labelled as plain
    numbers, unlabelled minor ticks (so no label ever overlaps another)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = min(values) / pad, max(values) * pad
    which = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)
    which.set_major_locator(FixedLocator(log_ticks(lo, hi, max_ticks)))
    which.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


# Label directions (dx, dy) and how the text anchors there; tried nearest first.
_DIRECTIONS = ((1, 0, "left", "center"), (-1, 0, "right", "center"), (0, 1, "center", "bottom"),
               (0, -1, "center", "top"), (1, 1, "left", "bottom"), (-1, 1, "right", "bottom"),
               (1, -1, "left", "top"), (-1, -1, "right", "top"))  # fmt: skip
_RADII = (4, 9, 15, 22, 30, 40, 52, 66)  # points from the marker


def label_points(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], **text: Any) -> list[Any]:
    """Label each point ``(xs[i], ys[i])`` with ``labels[i]`` where the text overlaps no other label, no marker
    and stays inside the axes: the nearest free spot of 8 directions at growing distances, with a thin
    leader line when it is not beside its marker (the least-overlapping spot when none is free). Call once
    the axes' limits and scales are final.

    Returns the text artists (each in ``ax.texts``), in the order of ``labels``.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()  # text extents; transforms follow the current limits
    marks = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys, strict=True)]
    r = 4.0 * fig.dpi / 72.0  # a marker's half size in pixels
    obstacles = [(mx - r, my - r, mx + r, my + r) for mx, my in marks]
    style = {"fontsize": 6, **text}
    texts: dict[int, Any] = {}
    # Crowded points first: they have the fewest free spots.
    crowd = [sum(abs(m[0] - n[0]) + abs(m[1] - n[1]) < 60 for n in marks) for m in marks]
    for i in sorted(range(len(labels)), key=lambda i: -crowd[i]):
        t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(0, 0), textcoords="offset points", **style)
        spot, box = _free_spot(t, renderer, ax.get_window_extent(renderer), obstacles)
        if spot[4] > _RADII[1]:  # away from its marker: redraw with a leader line
            t.remove()
            line = {"arrowstyle": "-", "color": "#999999", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=spot[:2], textcoords="offset points",
                            ha=spot[2], va=spot[3], arrowprops=line, **style)  # fmt: skip
        obstacles.append(box)
        texts[i] = t
    return [texts[i] for i in range(len(labels))]


def _free_spot(t: Any, renderer: Any, frame: Any, obstacles: list) -> tuple[tuple, tuple]:
    """The first offset (nearest first) where text ``t`` overlaps no obstacle and stays in ``frame``, else the
    least-overlapping one: ``((dx, dy, ha, va, radius), box)``; ``t`` is left there."""
    best: tuple = ((0, 0, "left", "center", 0), (0, 0, 0, 0))
    best_cost = float("inf")
    for radius in _RADII:
        for dx, dy, ha, va in _DIRECTIONS:
            scale = radius / (2**0.5 if dx and dy else 1.0)
            t.set_position((dx * scale, dy * scale))
            t.set_ha(ha)
            t.set_va(va)
            e = t.get_window_extent(renderer)
            box = (e.x0 - 1, e.y0 - 1, e.x1 + 1, e.y1 + 1)
            outside = (e.x1 - e.x0) * (e.y1 - e.y0) - _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
            cost = sum(_overlap(box, o) for o in obstacles) + 10 * max(0.0, outside)
            if cost < best_cost:
                best, best_cost = ((dx * scale, dy * scale, ha, va, radius), box), cost
            if cost <= 0:
                return best
    (dx, dy, ha, va, _), _box = best
    t.set_position((dx, dy))
    t.set_ha(ha)
    t.set_va(va)
    return best


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The area two boxes ``(x0, y0, x1, y1)`` share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def bar_chart(
    path: str | Path, labels: Sequence[str], series: dict[str, Sequence[float]], *, title: str, ylabel: str
) -> None:
    """Grouped bars: one group per label, one bar per series (e.g. per-layer metric drop per method)."""
    n = max(1, len(series))
    fig = new_figure(max(5.0, 0.45 * len(labels) * n + 1.5), 3.6)
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


def judged_quality(row: dict[str, Any], baseline: float, higher_is_better: bool) -> float:
    """The quality the budget judges ``row`` by: ``baseline - drop_bound`` (the measured drop plus its margin of
    standard errors, :mod:`torchslim.tuning.budget`) where the row has one, else its measured ``quality``.
    A row is within budget exactly when this lies on the baseline's side of the budget line.

    Example:
        >>> judged_quality({"quality": 0.985, "drop": 0.004, "drop_bound": 0.012}, 0.989, True)
        0.977
    """
    if row.get("drop_bound") is None:
        return row["quality"]
    return round(baseline - (1 if higher_is_better else -1) * row["drop_bound"], 12)


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
    higher_is_better: bool | None = None,
) -> Any:
    """Judged quality against size (KB, log) and against latency (ms): trials, their front, references, budget.

    Every point is drawn at the quality the budget judges it by (:func:`judged_quality`), so over-budget
    trials (red crosses) lie beyond the budget line and trials within it (blue dots) on the baseline's side.
    The baseline, every reference and every front trial (``#number``) carry a label.

    Args:
        trials: dicts with ``size_bytes``, ``latency_ms``, ``quality``, ``feasible`` and, where judged with a
            margin, ``drop_bound``; ``number`` labels front trials.
        front: the feasible trials to draw as the front (connected, by size).
        references: dicts with ``name``, ``size_bytes``, ``latency_ms``, ``quality``, optional ``kind``
            (``"builtin"`` or ``"peer"``) and ``drop_bound``.
        baseline: dict with ``size_bytes``, ``latency_ms``, ``quality``.
        budget: the quality line (baseline minus the allowed drop, in the metric's direction).
        higher_is_better: the metric's direction (default: the side of the budget line the baseline is on).

    Returns the figure (also written to ``path``).
    """
    base_q = baseline["quality"]
    hib = (base_q >= budget) if higher_is_better is None else higher_is_better

    def y(rows: Sequence[dict[str, Any]]) -> list[float]:
        return [judged_quality(r, base_q, hib) for r in rows]

    margin = any(r.get("drop_bound") not in (None, r.get("drop")) for r in [*trials, *references])
    fig = new_figure(10.0, 4.4)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    feas = [t for t in trials if t.get("feasible")]
    infeas = [t for t in trials if not t.get("feasible")]
    ordered = sorted(front, key=lambda r: r["size_bytes"])
    labelled = []
    for ax, key, label in zip(axes, ("size_bytes", "latency_ms"), ("size (KB, log)", "latency (ms)"), strict=True):
        scale = 1e-3 if key == "size_bytes" else 1.0

        def xs(rows: Sequence[dict[str, Any]], key: str = key, scale: float = scale) -> list[float]:
            return [r[key] * scale for r in rows]

        ax.scatter(xs(infeas), y(infeas), s=20, c="#d62728", marker="x", linewidths=0.9, label="trial over budget")
        ax.scatter(xs(feas), y(feas), s=18, c="#1f77b4", label="trial within budget")
        if ordered:
            ax.plot(xs(ordered), y(ordered), c="#1f77b4", linewidth=1.0, label="tuned front")
            ax.scatter(xs(ordered), y(ordered), s=40, facecolors="none", edgecolors="#1f77b4")
        for ref in references:
            peer = ref.get("kind") == "peer"
            ax.scatter([ref[key] * scale], y([ref]), s=34, marker="^" if peer else "s",
                       c="#2ca02c" if peer else "#ff7f0e")  # fmt: skip
        ax.scatter([baseline[key] * scale], [base_q], s=90, marker="*", c="black", label="baseline")
        ax.axhline(budget, color="#d62728", linestyle="--", linewidth=0.8, label="budget")
        values = xs([*trials, *references, baseline])
        if key == "size_bytes":
            set_log_axis(ax, values, pad=1.5)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric}, judged (minus the budget's margin)" if margin else metric, fontsize=8)
        ax.grid(alpha=0.3)
        qs = y(feas) + [base_q, budget]
        qs += [q for q in y(references) if abs(q - budget) <= 3 * abs(base_q - budget)]
        span = max(qs) - min(qs) or 1.0
        ax.set_ylim(min(qs) - 0.6 * span, max(qs) + 0.25 * span)  # zoom on the budget; collapsed trials fall below
        fronts = [dict(t, name=f"#{t['number']}") for t in ordered if "number" in t]
        named = [*references, *fronts]
        labelled.append(
            (ax, xs(named) + xs([baseline]), y(named) + [base_q], [r["name"] for r in named] + ["baseline"])
        )
    axes[0].scatter([], [], s=34, marker="s", c="#ff7f0e", label="built-in recipe")
    if any(r.get("kind") == "peer" for r in references):
        axes[0].scatter([], [], s=34, marker="^", c="#2ca02c", label="peer (bench, test split)")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    for ax, px, py, names in labelled:
        label_points(ax, px, py, names)
    save_png(fig, path)
    return fig
