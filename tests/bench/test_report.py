"""torchslim.bench.report: BENCHMARKS.md and the headline plot from benchmark JSON fixtures."""

from __future__ import annotations

import json
from pathlib import Path

from torchslim.bench.report import main, render


def _bench(name: str, metric: str, q: float) -> dict:
    rows = [
        {"variant": "fp32", "latency_ms": 2.0, "speedup": 1.0, "size_mb": 1.0, "quality": {metric: q}},
        {"variant": "torchslim-int8-static", "latency_ms": 1.0, "speedup": 2.0, "size_mb": 0.25,
         "quality": {metric: q - 0.001}, "params": 10},
        {"variant": "peer-torch.ao-int8-static", "latency_ms": 1.5, "speedup": 1.33, "size_mb": 0.3,
         "quality": {metric: q - 0.01}},
    ]  # fmt: skip
    return {"benchmark": name, "device": "cpu", "torch": "2.13", "threads": 1, "rows": rows, "notes": ["a note"]}


def test_render_writes_tables_commands_and_a_small_png(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    for name, metric, q in (("digits", "accuracy", 0.98), ("minilm-stsb", "spearman", 82.0)):
        (tmp_path / "bench" / f"{name}.json").write_text(json.dumps(_bench(name, metric, q)))
    md = render(tmp_path, "../shared/data").read_text()
    assert md.count("\n## ") == 2
    assert "`torchslim bench minilm-stsb --data ../shared/data/stsbenchmark --json bench/minilm-stsb.json`" in md
    assert "`torchslim compress --workload digits --recipe int8-static --out out/digits-int8-static` |" in md
    # minilm-stsb builds no int8-static row from the recipe: the benchmark itself reproduces such a row
    assert "0.2500 | 81.9990 | 10 | `torchslim bench minilm-stsb --data ../shared/data/stsbenchmark` |" in md
    assert "| peer-torch.ao-int8-static | 1.500 | 1.33x | 0.3000 | 0.9700 | - | `torchslim bench digits` |" in md
    assert "- a note" in md
    png = tmp_path / "bench" / "headline.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 100_000


def test_cli_render_only_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "digits.json").write_text(json.dumps(_bench("digits", "accuracy", 0.98)))
    assert main(["--out", str(tmp_path), "--render-only"]) == 0
    assert (tmp_path / "BENCHMARKS.md").is_file()
    assert main(["--out", str(tmp_path), "--only", "nope"]) == 2
