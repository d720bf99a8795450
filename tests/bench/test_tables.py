"""Every benchmark's declared table (rows, quality metrics, extra columns, recipe rows) is pinned here.

The pins are the rows and columns of the committed ``bench/*.json`` (the figures in BENCHMARKS.md): a
benchmark that renames, drops or reorders a row or a column fails here before a full run would show it.
The committed JSON must also pass each table's own check, and the harness must refuse results that
stray from their declaration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchslim.bench import BENCHMARKS, BenchResult, BenchTable, Variant, table
from torchslim.bench.harness import RowBuilder, macs_reduction, speedup_column, threads
from torchslim.bench.report import bench_command, row_command
from torchslim.recipes import builtin_recipes

ROOT = Path(__file__).resolve().parents[2]

# name -> (rows, metrics, extra columns), as in bench/NAME.json.
PINNED = {
    "digits": (
        (
            "fp32",
            "torchslim-bf16",
            "peer-torch-autocast-bf16",
            "torchslim-fold-bn",
            "torchslim-default",
            "torchslim-int8-static",
            "peer-torch.ao-int8-static",
        ),
        ("accuracy",),
        ("params", "macs"),
    ),
    "minilm-stsb": (
        (
            "fp32",
            "torchslim-bf16",
            "torchslim-int8-dynamic",
            "torchslim-int8-dynamic-eager",
            "torchslim-int8-weight-only",
            "torchslim-int4-rtn-g128",
            "torchslim-int4-gptq-g128",
            "torchslim-int4-awq-g128",
            "torchslim-int4-hqq-g128",
            "peer-torch.ao-int8-dynamic",
            "peer-torchao-int8-dynamic-compiled",
            "peer-onnxruntime-int8",
        ),
        ("stsb_spearman", "cos_min"),
        ("build_s",),
    ),
    "digits-structured": (
        ("fp32", "torchslim-macs2x", "torchslim-macs4x", "peer-torch-pruning", "peer-torch-prune-ln-structured"),
        ("accuracy",),
        ("params", "macs", "macs_reduction", "speedup_b512"),
    ),
    "minilm-structured": (
        (
            "fp32",
            "torchslim-heads50-ffn50",
            "torchslim-lowrank-ffn50",
            "torchslim-drop-3-layers",
            "peer-torch-pruning-heads50-ffn50",
        ),
        ("stsb_spearman", "cos_min"),
        ("params", "macs", "macs_reduction", "speedup_1thread"),
    ),
    "digits-kd": (
        ("fp32", "torchslim-student-labels", "torchslim-student-kd"),
        ("accuracy", "errors", "accuracy_std", "val_accuracy"),
        ("params", "macs"),
    ),
    "minilm-kd": (
        (
            "fp32",
            "torchslim-drop-3-layers",
            "torchslim-distill-3-layers",
            "torchslim-heads50-ffn50",
            "torchslim-heads50-ffn50-distilled",
        ),
        ("stsb_spearman", "cos_min"),
        ("params",),
    ),
    "digits-prune": (
        (
            "fp32",
            "torchslim-oneshot-50",
            "torchslim-oneshot-80",
            "torchslim-oneshot-90",
            "torchslim-oneshot-95",
            "torchslim-gradual-50",
            "torchslim-gradual-80",
            "torchslim-gradual-90",
            "torchslim-gradual-90-int8",
            "torchslim-gradual-95",
            "peer-torch-prune-global-unstructured-90",
        ),
        ("accuracy",),
        ("nonzero",),
    ),
    "minilm-prune": (
        (
            "fp32",
            "torchslim-magnitude-50",
            "torchslim-wanda-50",
            "torchslim-sparsegpt-50",
            "torchslim-2of4",
            "torchslim-sparse-70",
            "torchslim-sparse-70-distilled",
        ),
        ("stsb_spearman", "cos_min"),
        ("nonzero",),
    ),
    "fsdd-kws": (
        ("fp32", "torchslim-student-kd", "torchslim-int8-static", "torchslim-kws-tiny", "peer-torch.ao-int8-static"),
        ("accuracy", "accuracy_speaker_out"),
        ("params", "artifact_kb", "macs"),
    ),
    "llama-decode": (
        (
            "fp32",
            "torchslim-bf16",
            "torchslim-int8-weight-only",
            "torchslim-int4-g128",
            "peer-torchao-int4-prototype",
            "peer-torch.ao-int8-dynamic",
        ),
        (),
        ("build_s", "tokens_per_s", "ms_per_token", "read_mb", "bound_ms", "x_bound"),
    ),
    "shakespeare-gpt": (
        (
            "fp32",
            "torchslim-int4-rtn-g128",
            "torchslim-int4-gptq-g128",
            "torchslim-int4-awq-g128",
            "torchslim-int4-hqq-g128",
            "torchslim-int4-rtn-g32",
            "torchslim-int4-gptq-g32",
            "torchslim-int4-awq-g32",
            "torchslim-int4-hqq-g32",
            "torchslim-int4-mixed",
        ),
        ("val_ppl", "val_loss"),
        ("build_s", "ppl_vs_fp32"),
    ),
}
TUNE = {
    "digits-tune": ("digits", [n for n in builtin_recipes() if n != "int8-dynamic-compiled"], ("accuracy",)),
    "minilm-tune": (
        "minilm-stsb",
        ["bf16", "int8-dynamic", "int8-weight-only", "int4-g128", "wanda-50"],
        ("stsb_spearman", "cos_min"),
    ),
}
RECIPE_ROWS = {
    "digits": {
        "torchslim-bf16": "bf16",
        "torchslim-fold-bn": "fold-bn",
        "torchslim-default": "default",
        "torchslim-int8-static": "int8-static",
    },
    "minilm-stsb": {
        "torchslim-bf16": "bf16",
        "torchslim-int8-dynamic": "int8-dynamic-compiled",
        "torchslim-int8-weight-only": "int8-weight-only",
    },
    "digits-structured": {"torchslim-macs2x": "channels-2x", "torchslim-macs4x": "channels-4x"},
    "fsdd-kws": {"torchslim-int8-static": "int8-static", "torchslim-kws-tiny": "kws-tiny"},
    "llama-decode": {"torchslim-bf16": "bf16", "torchslim-int8-weight-only": "int8-weight-only"},
    "shakespeare-gpt": {"torchslim-int4-gptq-g128": "int4-g128"},
}


def test_every_registered_benchmark_is_pinned() -> None:
    assert set(BENCHMARKS) == set(PINNED) | set(TUNE)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_declared_rows_and_columns(name: str) -> None:
    rows, metrics, columns = PINNED[name]
    declared = table(name)
    assert declared.name == name
    assert (declared.rows, declared.metrics, declared.columns) == (rows, metrics, columns)
    assert dict(declared.recipes) == RECIPE_ROWS.get(name, {})


@pytest.mark.parametrize("name", sorted(TUNE))
def test_tune_tables_list_their_builtins_then_the_tuned_row(name: str) -> None:
    workload, builtins, metrics = TUNE[name]
    declared = table(name)
    assert declared.workload == workload and declared.metrics == metrics
    assert declared.rows == ("fp32", *(f"torchslim-{b}" for b in builtins), "torchslim-tuned")
    assert dict(declared.recipes) == {f"torchslim-{b}": b for b in builtins}
    assert declared.columns == ("val_drop", "val_drop_se", "within_budget")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_committed_json_matches_its_table(name: str) -> None:
    data = json.loads((ROOT / "bench" / f"{name}.json").read_text(encoding="utf-8"))
    declared = table(name)
    declared.check(BenchResult(name, data["rows"]))
    if name not in TUNE:  # tune rows follow the built-in recipes, which may have grown since the last run
        assert [r["variant"] for r in data["rows"]] == list(declared.rows)


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
