"""Pictures people read (issue #20): bench/headline.png and tune's pareto.png label every named point without
overlaps, keep tick labels apart, and draw over-budget trials beyond the budget line.

Each plot is rendered into tmp_path from a small synthetic table and read back from its matplotlib artists.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from matplotlib.text import Text

from torchslim.bench.report import headline_plot
from torchslim.tuning.plots import log_ticks, pareto_chart


def _extent(artist: Any, renderer: Any) -> tuple[float, float, float, float]:
    """The window box of ``artist``; of a label, its text alone (not the leader line to its point)."""
    e = (Text.get_window_extent if isinstance(artist, Text) else type(artist).get_window_extent)(artist, renderer)
    return e.x0, e.y0, e.x1, e.y1


def _overlaps(a: tuple, b: tuple) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def _assert_apart(boxes: list[tuple], what: str) -> None:
    for (na, a), (nb, b) in itertools.combinations(boxes, 2):
        assert not _overlaps(a, b), f"{what}: {na!r} overlaps {nb!r}"


def _tick_labels(ax: Any, renderer: Any) -> dict[str, list[tuple]]:
    out = {}
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
        out[name] = [(t.get_text(), _extent(t, renderer)) for t in labels]
    return out


def _check_readable(fig: Any) -> None:
    """No two point labels of an axes overlap; no two tick labels of an axis overlap; labels stay inside."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = [(t.get_text(), _extent(t, renderer)) for t in ax.texts]
        _assert_apart(texts, f"labels of {ax.get_title()!r}")
        frame = _extent(ax, renderer)
        for name, (x0, y0, x1, y1) in texts:
            assert frame[0] - 1 <= x0 and x1 <= frame[2] + 1 and frame[1] - 1 <= y0 and y1 <= frame[3] + 1, name
        for axis, ticks in _tick_labels(ax, renderer).items():
            assert len(ticks) >= 2, f"{ax.get_title()!r}: fewer than two {axis} tick labels"
            _assert_apart(ticks, f"{axis} tick labels of {ax.get_title()!r}")


def _rows(sizes_speeds: list[tuple[str, float, float, float]]) -> list[dict]:
    return [
        {"variant": v, "latency_ms": 10.0 / s, "speedup": s, "size_mb": mb, "quality": {"accuracy": q}}
        for v, mb, s, q in sizes_speeds
    ]


def test_headline_labels_every_point_with_size_and_speed(tmp_path: Path) -> None:
    results = {
        # a crowd: six variants within 10% in size and speed, plus a wide log range (0.006 .. 0.4 MB)
        "digits": {
            "rows": _rows(
                [("fp32", 0.38, 1.0, 0.989), ("torchslim-bf16", 0.19, 1.09, 0.989)]
                + [(f"torchslim-prune-{k}", 0.05 + 0.002 * k, 1.05 + 0.01 * k, 0.98) for k in range(6)]
                + [("torchslim-kws-tiny", 0.0062, 1.79, 0.983), ("peer-torch.ao-int8-static", 0.107, 1.79, 0.989)]
            )
        },
        # a narrow range (69 .. 90 MB): the old log axis printed overlapping 7x10^1 / 8x10^1 / 9x10^1 labels
        "minilm-kd": {"rows": _rows([("fp32", 90.27, 1.0, 0.82), ("torchslim-drop-3", 68.97, 2.03, 0.79)])},
    }
    fig = headline_plot(results, tmp_path / "headline.png")
    png = tmp_path / "headline.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 100_000
    for ax, (name, data) in zip(fig.axes, results.items(), strict=True):
        assert ax.get_title().startswith(name)
        points = sorted((float(x), float(y)) for c in ax.collections for x, y in c.get_offsets())
        expected = sorted((r["size_mb"], r["speedup"]) for r in data["rows"])
        assert points == expected  # x = size MB, y = speedup
        assert ax.get_xscale() == "log" and "size" in ax.get_xlabel() and "speedup" in ax.get_ylabel()
        labelled = {t.xy: t.get_text() for t in ax.texts}  # annotation anchor -> text
        for r in data["rows"]:
            text = labelled[(r["size_mb"], r["speedup"])]
            assert text.startswith(r["variant"].removeprefix("torchslim-").removeprefix("peer-"))
            assert f"{r['quality']['accuracy']:.4g}" in text
    _check_readable(fig)


def _pareto(tmp_path: Path, higher_is_better: bool) -> tuple[Any, float, list[dict]]:
    sign = 1 if higher_is_better else -1
    base = 0.989 if higher_is_better else 6.29
    trials = []
    for i, (drop, se) in enumerate([(0.000, 0.0), (0.004, 0.001), (0.007, 0.002), (0.006, 0.006), (0.02, 0.01)]):
        bound = drop + se
        trials.append(
            {
                "number": i,
                "size_bytes": 40_000 / (i + 1),
                "latency_ms": 1.0 + 0.1 * i,
                "quality": base - sign * drop,
                "drop": drop,
                "drop_se": se,
                "drop_bound": bound,
                "feasible": bound <= 0.01,
            }
        )
    refs = [
        {"name": "int8-static", "kind": "builtin", "size_bytes": 98_000, "latency_ms": 0.7, "quality": base,
         "drop": 0.0, "drop_bound": 0.0},
        {"name": "torch.ao", "kind": "peer", "size_bytes": 107_000, "latency_ms": 0.5, "quality": base},
    ]  # fmt: skip
    front = [t for t in trials if t["feasible"]]
    budget = base - sign * 0.01
    fig = pareto_chart(
        tmp_path / "pareto.png",
        trials=trials,
        front=front,
        references=refs,
        baseline={"size_bytes": 380_000, "latency_ms": 1.2, "quality": base},
        metric="accuracy" if higher_is_better else "val_ppl",
        budget=budget,
        title="toy",
        higher_is_better=higher_is_better,
    )
    return fig, budget, trials


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_pareto_draws_over_budget_trials_beyond_the_budget_line(tmp_path: Path, higher_is_better: bool) -> None:
    fig, budget, trials = _pareto(tmp_path, higher_is_better)
    # trial 3: measured drop 0.006 < 0.01, but 0.006 + 1 s.e. = 0.012 is over: the budget judged it infeasible
    assert not trials[3]["feasible"] and trials[3]["drop"] < 0.01
    beyond = (lambda q: q < budget) if higher_is_better else (lambda q: q > budget)
    for ax in fig.axes:
        line = next(ln for ln in ax.lines if ln.get_label() == "budget")
        assert line.get_ydata()[0] == pytest.approx(budget)
        over = next(c for c in ax.collections if c.get_label() == "trial over budget")
        within = next(c for c in ax.collections if c.get_label() == "trial within budget")
        assert len(over.get_offsets()) == 2 and len(within.get_offsets()) == 3
        assert all(beyond(y) for _, y in over.get_offsets())
        assert not any(beyond(y) for _, y in within.get_offsets())
        assert tuple(over.get_facecolor()[0]) != tuple(within.get_facecolor()[0])  # visibly distinct
        names = sorted(t.get_text() for t in ax.texts)
        assert names == sorted(["int8-static", "torch.ao", "baseline", "#0", "#1", "#2"])
    assert fig.axes[0].get_xscale() == "log"
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    _check_readable(fig)


def test_log_ticks_are_round_and_few() -> None:
    assert log_ticks(0.006, 0.4) == [0.01, 0.02, 0.05, 0.1, 0.2]
    assert log_ticks(69.0, 90.3) == [70.0, 80.0, 90.0]
    assert 2 <= len(log_ticks(17.0, 90.0)) <= 6
    assert len(log_ticks(1e-3, 1e6)) <= 6
