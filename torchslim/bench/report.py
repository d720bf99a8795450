"""``BENCHMARKS.md``: run every registered benchmark in turn and render its JSON as tables and a headline plot.

Run all (each benchmark in its own process, so one crash or leak does not take the others down)::

    python -m torchslim.bench.report --out . --data-root /data
    python -m torchslim.bench.report --out . --only digits,digits-tune --quick
    python -m torchslim.bench.report --out . --render-only        # rewrite BENCHMARKS.md from bench/*.json

Outputs in ``--out``: ``bench/NAME.json`` (the benchmark JSON, see :mod:`torchslim.bench.harness`),
``BENCHMARKS.md`` (one table per benchmark; beside each row the command that reproduces it) and
``bench/headline.png`` (speedup against size for every benchmark, each point labelled with its variant
and quality, under 100 KB).

Example:
    >>> rows = [{"variant": "fp32", "latency_ms": 2.0, "speedup": 1.0, "size_mb": 1.0, "quality": {"accuracy": 0.9}}]
    >>> print(render_table("digits", {"rows": rows}, "/data").splitlines()[2])
    | fp32 | 2.000 | 1.00x | 1.0000 | 0.9000 | `torchslim measure --workload digits` |
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchslim.workloads.datadir import DATA_ENV

__all__ = ["DATA", "bench_command", "main", "render", "render_table", "row_command", "run_all"]

# Workload -> its data under --data-root (the others need none).
DATA = {"minilm-stsb": "stsbenchmark", "fsdd-kws": "fsdd/recordings", "shakespeare-gpt": "tinyshakespeare/input.txt"}
_EXTRA_KEYS = ("variant", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "quality")


def _table(bench: str) -> Any:
    """The declared table of benchmark ``bench`` (its workload and recipe rows); KeyError when unregistered."""
    from torchslim.bench import BENCHMARKS, table

    if bench not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {bench!r}; registered: {', '.join(BENCHMARKS)}")
    return table(bench)


def _data_arg(workload: str, data_root: str) -> list[str]:
    sub = DATA.get(workload)
    return ["--data", f"{data_root.rstrip('/')}/{sub}"] if sub else []


def bench_command(name: str, data_root: str, quick: bool = False, json_out: bool = True) -> str:
    """The command that reruns benchmark ``name`` (writing its JSON unless ``json_out`` is false).

    Example:
        >>> bench_command("minilm-kd", "/data")
        'torchslim bench minilm-kd --data /data/stsbenchmark --json bench/minilm-kd.json'
    """
    args = ["torchslim", "bench", name, *_data_arg(_table(name).workload, data_root)]
    args += ["--quick"] if quick else []
    args += ["--json", f"bench/{name}.json"] if json_out else []
    return " ".join(args)


def row_command(bench: str, variant: str, data_root: str) -> str:
    """The command reproducing one row of benchmark ``bench``.

    ``fp32``: ``torchslim measure`` of the bench's workload (the benchmark itself when its module sets
    ``FP32_FROM_BENCH``: a reference run rather than a model); a row the bench builds from a built-in recipe
    (its table's ``recipes``): ``torchslim compress`` with that recipe; ``torchslim-tuned``: ``torchslim
    tune`` with the bench's own settings; any other row: the benchmark itself.

    Example:
        >>> row_command("fsdd-kws", "torchslim-kws-tiny", "/data")
        'torchslim compress --workload fsdd-kws --data /data/fsdd/recordings --recipe kws-tiny --out out/fsdd-kws-kws-tiny'
        >>> row_command("minilm-stsb", "torchslim-int8-dynamic", "data").split(" --recipe ")[1]
        'int8-dynamic-compiled --out out/minilm-stsb-int8-dynamic-compiled'
    """
    declared = _table(bench)
    workload = declared.workload
    data = "".join(f" {a}" for a in _data_arg(workload, data_root))
    recipe = declared.recipes.get(variant)
    from torchslim.bench import bench_module

    module = bench_module(bench)
    if variant == "fp32" and not getattr(module, "FP32_FROM_BENCH", False):
        return f"torchslim measure --workload {workload}{data}"
    if variant == "torchslim-tuned" and hasattr(module, "tune_settings"):
        from torchslim.bench.tune_common import tune_flags

        flags = " ".join(tune_flags(**module.tune_settings()))
        return f"torchslim tune --workload {workload}{data} {flags} --out out/tune-{workload}"
    if recipe is not None:
        return f"torchslim compress --workload {workload}{data} --recipe {recipe} --out out/{workload}-{recipe}"
    return bench_command(bench, data_root, json_out=False)


def render_table(name: str, data: dict[str, Any], data_root: str) -> str:
    """A Markdown table of one benchmark's rows with a ``reproduce`` column."""
    rows = data.get("rows", [])
    metrics: list[str] = []
    extras: list[str] = []
    for r in rows:
        metrics += [k for k in r.get("quality", {}) if k not in metrics]
        extras += [k for k in r if k not in _EXTRA_KEYS and k not in extras]
    header = ["variant", "latency ms", "speedup", "size MB", *metrics, *extras, "reproduce"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        q = [f"{r['quality'][m]:.4f}" if m in r.get("quality", {}) else "-" for m in metrics]
        e = [_cell(r.get(k)) for k in extras]
        size = "-" if r.get("size_mb") is None else f"{r['size_mb']:.4f}"
        speedup = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"  # no baseline timed for this row
        cells = [r["variant"], f"{r['latency_ms']:.3f}", speedup, size, *q, *e]
        lines.append("| " + " | ".join([*cells, _code(lambda r=r: row_command(name, r["variant"], data_root))]) + " |")
    return "\n".join(lines)


def _code(command: Callable[[], str]) -> str:
    """``command()`` as inline code, or ``-`` for a benchmark that is not registered (nothing reruns it)."""
    try:
        return f"`{command()}`"
    except KeyError:
        return "-"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def _short(variant: str) -> str:
    """A row's name on the plot: ours without ``torchslim-``, peers without ``peer-`` (their marker says so).

    Example:
        >>> _short("torchslim-int8-dynamic"), _short("peer-onnxruntime-int8")
        ('int8-dynamic', 'onnxruntime-int8')
    """
    return variant.removeprefix("torchslim-").removeprefix("peer-")


_STYLES = {"fp32": ("*", "black", 80), "peer": ("^", "#2ca02c", 26), "ours": ("o", "#1f77b4", 20)}


def headline_plot(results: dict[str, dict[str, Any]], path: Path) -> Any:
    """One panel per benchmark: speedup over fp32 against artifact size (MB, log), every point labelled with
    its variant and quality (the panel title names the metric); fp32 a black star, ours blue circles, peers
    green triangles. Writes ``path``; returns the figure (None when no benchmark has sizes and speedups).
    """
    from torchslim.tuning.plots import label_points, new_figure, save_png, set_log_axis

    def plotted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("size_mb") and r.get("speedup")]

    panels = [(n, plotted(d["rows"])) for n, d in results.items() if plotted(d.get("rows", []))]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig = new_figure(4.6 * cols, 3.5 * nrows)
    fig.suptitle(
        "torchslim benchmarks: speedup over fp32 against artifact size; label: variant and quality "
        "(black star fp32, blue torchslim, green peers)",
        fontsize=9,
    )
    labelled = []
    for i, (name, rows) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        metric = next((m for r in rows for m in r.get("quality", {})), None)
        for r in rows:
            kind = "fp32" if r["variant"] == "fp32" else "peer" if r["variant"].startswith("peer-") else "ours"
            marker, color, area = _STYLES[kind]
            ax.scatter([r["size_mb"]], [r["speedup"]], marker=marker, c=color, s=area, zorder=3)
        ax.axhline(1.0, color="#888888", linewidth=0.6, linestyle=":", zorder=1)
        set_log_axis(ax, [r["size_mb"] for r in rows], pad=1.6)
        speeds = [r["speedup"] for r in rows] + [1.0]
        span = max(speeds) - min(speeds) or 1.0
        ax.set_ylim(min(speeds) - 0.25 * span, max(speeds) + 0.3 * span)
        ax.set_title(name + (f"  (label: variant {metric})" if metric else "  (label: variant)"), fontsize=8)
        ax.set_xlabel("artifact size MB (log)", fontsize=7)
        ax.set_ylabel("speedup over fp32 (x)", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.25)
        labels = [
            _short(r["variant"]) + (f" {r['quality'][metric]:.4g}" if metric in r.get("quality", {}) else "")
            for r in rows
        ]
        labelled.append((ax, rows, labels))
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # final panel boxes before the labels are placed
    for ax, rows, labels in labelled:
        label_points(ax, [r["size_mb"] for r in rows], [r["speedup"] for r in rows], labels)
    save_png(fig, path, colors=256)  # a palette PNG: the page stays light
    return fig


def render(out: str | Path, data_root: str, failures: dict[str, str] | None = None) -> Path:
    """Write ``OUT/BENCHMARKS.md`` and ``OUT/bench/headline.png`` from ``OUT/bench/*.json``; returns the MD path."""
    from torchslim.bench import BENCHMARKS
    from torchslim.tuning.report import write_text

    out = Path(out)
    results: dict[str, dict[str, Any]] = {}
    order = list(BENCHMARKS) + sorted(p.stem for p in (out / "bench").glob("*.json") if p.stem not in BENCHMARKS)
    for name in order:
        path = out / "bench" / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text(encoding="utf-8"))
    headline = out / "bench" / "headline.png"
    headline_plot(results, headline)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m torchslim.bench.report --out .` (every registered benchmark, each in its own "
        "process); do not edit by hand. Each benchmark times its rows interleaved in one process; `speedup` is "
        "against its `fp32` row. The last column reproduces the row from the repository root: `measure` the "
        "baseline, `compress` with the built-in recipe the benchmark builds that row from, `tune` with the "
        "benchmark's settings, or else the benchmark itself (`torchslim bench`).",
        "",
    ]
    if headline.is_file():
        lines += ["![speedup against size, every point labelled with its quality](bench/headline.png)", ""]
    targets = out / "bench" / "targets.md"  # the issues' targets against the rows below (kept by hand)
    if targets.is_file():
        lines += [targets.read_text(encoding="utf-8").rstrip(), ""]
    for name, data in results.items():
        lines += [
            f"## {name}",
            "",
            f"{_code(lambda name=name: bench_command(name, data_root))} — device {data.get('device', '?')}, torch {data.get('torch', '?')}, "
            f"{data.get('threads', '?')} thread(s)",
            "",
            render_table(name, data, data_root),
            "",
        ]
        lines += [f"- {n}" for n in data.get("notes", [])] + ([""] if data.get("notes") else [])
    for name, why in (failures or {}).items():
        lines += [f"## {name}: failed", "", "```", why.strip()[-1500:], "```", ""]
    md = out / "BENCHMARKS.md"
    write_text(md, "\n".join(lines).rstrip() + "\n")
    return md


def run_all(
    out: str | Path, names: Sequence[str], *, data_root: str, quick: bool, timeout: float | None = None
) -> dict[str, str]:
    """Run each benchmark as ``python -m torchslim bench NAME --json OUT/bench/NAME.json``; name -> error of failures."""
    out = Path(out)
    (out / "bench").mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    for name in names:
        target = out / "bench" / f"{name}.json"
        data = _data_arg(_table(name).workload, data_root)
        cmd = [sys.executable, "-m", "torchslim", "bench", name, *data, "--json", str(target)]
        cmd += ["--quick"] if quick else []
        print(f"[bench] {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            failures[name] = f"timed out after {timeout} s"
            continue
        print(proc.stdout[-4000:], flush=True)
        if proc.returncode != 0:
            failures[name] = f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
            print(f"[bench] {name} FAILED (exit {proc.returncode})", flush=True)
        else:
            print(f"[bench] {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); exit 0, 2 on usage errors, 1 when a benchmark failed."""
    from torchslim.bench import BENCHMARKS

    p = argparse.ArgumentParser(prog="python -m torchslim.bench.report", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".", help="folder for BENCHMARKS.md and bench/ (default: .)")
    p.add_argument("--only", help="comma-separated benchmark names (default: all registered)")
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument(
        "--data-root",
        default=os.environ.get(DATA_ENV),
        help=f"folder holding the data sets, as written in the commands of BENCHMARKS.md (default: ${DATA_ENV})",
    )
    p.add_argument("--render-only", action="store_true", help="only rewrite BENCHMARKS.md from existing JSON")
    p.add_argument("--timeout", type=float, help="seconds per benchmark")
    args = p.parse_args(argv)
    if not args.data_root:
        print(f"no data folder: pass --data-root DIR or set {DATA_ENV}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; registered: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failures = {}
    if not args.render_only:
        failures = run_all(args.out, names, data_root=args.data_root, quick=args.quick, timeout=args.timeout)
    md = render(args.out, args.data_root, failures)
    print(f"wrote {md}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
