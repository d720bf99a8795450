"""``BENCHMARKS.md``: run every registered benchmark in turn and render its JSON as tables and a headline plot.

Run all (each benchmark in its own process, so one crash or leak does not take the others down)::

    python -m torchslim.bench.report --out . --data-root ../shared/data
    python -m torchslim.bench.report --out . --only digits,digits-tune --quick
    python -m torchslim.bench.report --out . --render-only        # rewrite BENCHMARKS.md from bench/*.json

Outputs in ``--out``: ``bench/NAME.json`` (the DESIGN.md benchmark JSON), ``BENCHMARKS.md`` (one table
per benchmark; beside each row the command that reproduces it) and ``bench/headline.png`` (quality
against size for every benchmark, under 100 KB).

Example:
    >>> rows = [{"variant": "fp32", "latency_ms": 2.0, "speedup": 1.0, "size_mb": 1.0, "quality": {"accuracy": 0.9}}]
    >>> print(render_table("digits", {"rows": rows}, "../shared/data").splitlines()[2])
    | fp32 | 2.000 | 1.00x | 1.0000 | 0.9000 | `torchslim measure --workload digits` |
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DATA", "main", "render", "render_table", "row_command", "run_all"]

# Benchmark name prefix -> its data under --data-root (the others need none).
DATA = {"minilm": "stsbenchmark", "fsdd": "fsdd/recordings", "shakespeare": "tinyshakespeare/input.txt"}
_EXTRA_KEYS = ("variant", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "quality")


def _data_arg(name: str, data_root: str) -> list[str]:
    for prefix, sub in DATA.items():
        if name.startswith(prefix):
            return ["--data", f"{data_root.rstrip('/')}/{sub}"]
    return []


def _workload(name: str) -> str:
    return "minilm-stsb" if name.startswith("minilm") else name.split("-")[0]


def bench_command(name: str, data_root: str, quick: bool = False) -> str:
    """The command that reruns benchmark ``name``.

    Example:
        >>> bench_command("minilm-kd", "../shared/data")
        'torchslim bench minilm-kd --data ../shared/data/stsbenchmark --json bench/minilm-kd.json'
    """
    args = ["torchslim", "bench", name, *_data_arg(name, data_root)] + (["--quick"] if quick else [])
    return " ".join([*args, "--json", f"bench/{name}.json"])


def _tune_args(bench: str) -> str:
    """The budget and full trial count the ``*-tune`` benchmark ``bench`` gives ``tune`` (its ``MAX_DROP``, ``TRIALS``)."""
    from importlib import import_module

    from torchslim.bench import BENCHMARKS

    module = import_module(BENCHMARKS.get(bench, BENCHMARKS["digits-tune"]).partition(":")[0])
    return f"--max-drop {module.MAX_DROP} --trials {module.TRIALS}"


def row_command(bench: str, variant: str, data_root: str) -> str:
    """The command reproducing one row: the built-in recipe through ``compress``, else the benchmark.

    Example:
        >>> row_command("digits", "torchslim-int8-static", "../shared/data")
        'torchslim compress --workload digits --recipe int8-static --out out/int8-static'
    """
    workload = _workload(bench)
    data = " ".join(_data_arg(bench, data_root))
    data = f" {data}" if data else ""
    recipe = variant.removeprefix("torchslim-")
    if variant == "fp32":
        return f"torchslim measure --workload {workload}{data}"
    if variant == "torchslim-tuned":
        return f"torchslim tune --workload {workload}{data} {_tune_args(bench)} --out out/tune-{workload}"
    if variant.startswith("torchslim-") and recipe in _builtin_names():
        return f"torchslim compress --workload {workload}{data} --recipe {recipe} --out out/{recipe}"
    return f"torchslim bench {bench}{data}"


def _builtin_names() -> set[str]:
    """Names of the built-in recipe files (not parsed: one broken file must not break the report)."""
    from importlib import resources

    folder = resources.files("torchslim.recipes") / "builtin"
    return {e.name[: -len(".yaml")] for e in folder.iterdir() if e.name.endswith(".yaml")}


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
        cells = [r["variant"], f"{r['latency_ms']:.3f}", f"{r['speedup']:.2f}x", size, *q, *e]
        lines.append("| " + " | ".join([*cells, f"`{row_command(name, r['variant'], data_root)}`"]) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def headline_plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Quality against size (MB, log) per benchmark: fp32 star, torchslim circles, peer triangles."""
    from torchslim.tuning.plots import _figure, save_png

    panels = [(n, d) for n, d in results.items() if any(r.get("quality") and r.get("size_mb") for r in d["rows"])]
    if not panels:
        return
    cols = min(4, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig = _figure(3.0 * cols, 2.4 * nrows)
    for i, (name, data) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        rows = [r for r in data["rows"] if r.get("quality") and r.get("size_mb")]
        metric = next(iter(rows[0]["quality"]))
        for r in rows:
            if metric not in r["quality"]:
                continue
            style = (
                ("*", "black", 70)
                if r["variant"] == "fp32"
                else ("^", "#2ca02c", 22)
                if r["variant"].startswith("peer-")
                else ("o", "#1f77b4", 18)
            )
            ax.scatter([r["size_mb"]], [r["quality"][metric]], marker=style[0], c=style[1], s=style[2])
        ax.set_xscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("size MB", fontsize=7)
        ax.set_ylabel(metric, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle("torchslim benchmarks: quality vs size (black star fp32, blue torchslim, green peers)", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def render(out: str | Path, data_root: str = "../shared/data", failures: dict[str, str] | None = None) -> Path:
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
        "against its `fp32` row. The last column reproduces the row.",
        "",
    ]
    if headline.is_file():
        lines += ["![quality vs size](bench/headline.png)", ""]
    targets = out / "bench" / "targets.md"  # the issues' targets against the rows below (kept by hand)
    if targets.is_file():
        lines += [targets.read_text(encoding="utf-8").rstrip(), ""]
    for name, data in results.items():
        lines += [
            f"## {name}",
            "",
            f"`{bench_command(name, data_root)}` — device {data.get('device', '?')}, torch {data.get('torch', '?')}, "
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
        cmd = [sys.executable, "-m", "torchslim", "bench", name, *_data_arg(name, data_root), "--json", str(target)]
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
    p.add_argument("--data-root", default="../shared/data", help="folder holding the data sets (../shared/data)")
    p.add_argument("--render-only", action="store_true", help="only rewrite BENCHMARKS.md from existing JSON")
    p.add_argument("--timeout", type=float, help="seconds per benchmark")
    args = p.parse_args(argv)
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
