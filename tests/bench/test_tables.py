"""Every benchmark's declared table (rows, quality metrics, extra columns, recipe rows) is pinned here.

The pins are the rows and columns of the committed ``bench/*.json`` (the runs BENCHMARKS.md shows): a
benchmark whose table renames, drops or reorders a row or a column fails here before a full run would
show it. The harness must refuse results that stray from their declaration.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchslim.bench import BENCHMARKS, BenchResult, BenchTable, Variant, table, tune_digits
from torchslim.bench.harness import RowBuilder, macs_reduction, speedup_column, threads
from torchslim.bench.report import bench_command, row_command
from torchslim.recipes import builtin_recipes

ROOT = Path(__file__).resolve().parents[2]

_ROW_KEYS = {"variant", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "quality"}


def _committed(name: str) -> tuple[list[str], list[str], list[str]]:
    """Rows, quality metrics and extra columns of ``bench/NAME.json``, each in first-seen order."""
    rows = json.loads((ROOT / "bench" / f"{name}.json").read_text(encoding="utf-8"))["rows"]
    metrics: list[str] = []
    columns: list[str] = []
    for r in rows:
        metrics += [k for k in r["quality"] if k not in metrics]
        columns += [k for k in r if k not in _ROW_KEYS and k not in columns]
    return [r["variant"] for r in rows], metrics, columns


RECORDED = sorted(n for n in BENCHMARKS if (ROOT / "bench" / f"{n}.json").is_file())
TUNE = ("digits-tune", "minilm-tune")


def test_the_recorded_benchmarks_are_all_registered() -> None:
    # Every benchmark of BENCHMARKS.md; a benchmark added later may have no recorded run yet.
    assert {
        "digits",
        "minilm-stsb",
        "digits-structured",
        "minilm-structured",
        "digits-kd",
        "minilm-kd",
        "digits-prune",
        "minilm-prune",
        "fsdd-kws",
        "digits-tune",
        "minilm-tune",
        "llama-decode",
        "shakespeare-gpt",
    } <= set(RECORDED)


@pytest.mark.parametrize("name", RECORDED)
def test_declared_rows_and_columns_are_the_recorded_ones(name: str) -> None:
    rows, metrics, columns = _committed(name)
    declared = table(name)
    assert declared.name == name
    assert declared.metrics == tuple(metrics)
    if name in TUNE:  # a built-in recipe added after the recorded run has no row in it yet
        declared = dataclasses.replace(declared, optional=(*declared.optional, *declared.recipes))
    declared.check(BenchResult(name, json.loads((ROOT / "bench" / f"{name}.json").read_text())["rows"]))
    if name in TUNE:  # rows follow the built-in recipes (which may grow); val_drop_se only where defined
        assert set(columns) <= set(declared.columns)
    else:  # an optional row a run left out (llama-sequential's in-memory 3 B peer without room) may be absent
        expected = [r for r in declared.rows if r in rows or r not in declared.optional]
        assert (expected, list(declared.columns)) == (rows, columns)


@pytest.mark.parametrize("name", TUNE)
def test_tune_tables_list_their_builtins_then_the_tuned_row(name: str) -> None:
    declared = table(name)
    builtins = [r.removeprefix("torchslim-") for r in declared.rows[1:-1]]
    assert declared.rows[0] == "fp32" and declared.rows[-1] == "torchslim-tuned"
    assert dict(declared.recipes) == {f"torchslim-{b}": b for b in builtins}
    assert set(builtins) <= set(builtin_recipes())
    if name == "digits-tune":
        assert builtins == [n for n in builtin_recipes() if n not in tune_digits.SKIP]


def test_reproduce_commands_come_from_the_table() -> None:
    assert bench_command("digits", "D") == "torchslim bench digits --json bench/digits.json"
    assert bench_command("fsdd-kws", "D", quick=True, json_out=False) == (
        "torchslim bench fsdd-kws --data D/fsdd/recordings --quick"
    )
    assert row_command("digits", "fp32", "D") == "torchslim measure --workload digits"
    assert row_command("digits", "torchslim-fold-bn", "D") == (
        "torchslim compress --workload digits --recipe fold-bn --out out/digits-fold-bn"
    )
    assert row_command("digits-kd", "torchslim-student-kd", "D") == "torchslim bench digits-kd"
    assert row_command("minilm-kd", "torchslim-drop-3-layers", "D") == "torchslim bench minilm-kd --data D/stsbenchmark"


def _toy_table(**kw) -> BenchTable:
    return BenchTable("toy", "digits", ("fp32", "torchslim-a", "peer-b"), ("acc",), ("params",), **kw)


def _result(*rows: tuple[str, dict, dict]) -> BenchResult:
    return BenchResult("toy", [{"variant": n, "quality": q, **extra} for n, q, extra in rows])


def test_check_accepts_declared_rows_and_a_missing_peer() -> None:
    t = _toy_table()
    t.check(_result(("fp32", {"acc": 1.0}, {"params": 3}), ("torchslim-a", {}, {})))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ((("fp32", {}, {}),), "missing"),
        ((("torchslim-a", {}, {}), ("fp32", {}, {})), "in order"),
        ((("fp32", {}, {}), ("torchslim-a", {}, {}), ("torchslim-c", {}, {})), "in order"),
        ((("fp32", {"f1": 0.5}, {}), ("torchslim-a", {}, {})), "undeclared keys \\['f1'\\]"),
        ((("fp32", {}, {"macs": 1}), ("torchslim-a", {}, {})), "undeclared keys \\['macs'\\]"),
    ],
)
def test_check_refuses_what_the_table_does_not_declare(rows, match) -> None:
    with pytest.raises(ValueError, match=match):
        _toy_table().check(_result(*rows))


def test_optional_rows_may_be_missing_and_bad_declarations_fail() -> None:
    _toy_table(optional=("torchslim-a",)).check(_result(("fp32", {}, {})))
    with pytest.raises(ValueError, match="fp32"):
        BenchTable("t", "digits", ("torchslim-a",), ())
    with pytest.raises(ValueError, match="must be 'fp32' or start with"):
        BenchTable("t", "digits", ("fp32", "mine"), ())
    with pytest.raises(ValueError, match="recipe rows"):
        BenchTable("t", "digits", ("fp32",), (), recipes={"torchslim-x": "bf16"})


def test_table_run_times_with_its_rounds_and_appends_notes() -> None:
    x = (torch.zeros(2, 4),)
    t = BenchTable("toy", "digits", ("fp32", "torchslim-a"), ("q",), rounds=(2, 50), warmup=(1, 10))
    res = t.check(
        t.run(
            [Variant("fp32", nn.Linear(4, 4), x, quality={"q": 1.0}), Variant("torchslim-a", nn.Identity(), x)],
            quick=True,
            notes=["n1"],
        )
    )
    assert [r["variant"] for r in res.rows] == ["fp32", "torchslim-a"] and res.notes == ["n1"]
    assert res.rows[0]["speedup"] == 1.0


def test_row_builder_leaves_out_failing_peers_but_not_ours() -> None:
    warmed = []
    rows = RowBuilder(threads=1, warm=warmed.append)
    seen_threads = []

    def make():
        seen_threads.append(torch.get_num_threads())
        return nn.Linear(2, 2).train(), 24

    rows.add("fp32", make)
    rows.add("peer-x", lambda: (_ for _ in ()).throw(RuntimeError("no such package")))
    rows.add("torchslim-none", lambda: None, missing="core not importable")
    assert [b[0] for b in rows.built] == ["fp32"] and seen_threads == [1] and len(warmed) == 1
    assert not rows.built[0][1].training  # built rows are put in eval mode
    assert rows.notes == [
        "peer-x left out: RuntimeError: no such package",
        "torchslim-none left out: core not importable",
    ]
    with pytest.raises(RuntimeError):
        rows.add("torchslim-y", lambda: (_ for _ in ()).throw(RuntimeError("ours must build")))
    (v,) = rows.variants((torch.zeros(1, 2),), quality=lambda m: lambda: {"q": 1.0})
    assert v.name == "fp32" and v.size_bytes == 24 and "build_s" in v.extra and v.quality() == {"q": 1.0}


def test_threads_restores_and_derived_columns() -> None:
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    x = (torch.zeros(8, 64),)
    big = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    variants = [
        Variant("fp32", big, x, extra={"macs": 4 * 64 * 64}),
        Variant("torchslim-small", nn.Linear(64, 64), x, extra={"macs": 64 * 64}),
    ]
    macs_reduction(variants)
    speedup_column(variants, x, "speedup_1thread", rounds=3, warmup=1)
    assert [v.extra["macs_reduction"] for v in variants] == [1.0, 4.0]
    assert variants[0].extra["speedup_1thread"] == 1.0 and variants[1].extra["speedup_1thread"] > 0
    assert torch.get_num_threads() == before


def test_no_experiment_leftovers_in_benchmark_modules() -> None:
    for path in (ROOT / "torchslim" / "bench").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "report.py":  # report's __main__ is `python -m torchslim.bench.report`
            assert "__main__" not in text, path.name
        assert "shared/data" not in text and "DESIGN.md" not in text, path.name
