"""Every reproduce command in BENCHMARKS.md (and those rendered from bench/*.json) runs as written (issue #20).

Each command is parsed by the real CLI parser and must name a known subcommand, workload, benchmark and
built-in recipe, and data that exists relative to the repository root. The MiniLM int8 row names the
compiled recipe its bench builds it from, and the tuned rows pass ``tune`` the bench's own settings.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import import_module
from pathlib import Path

import pytest

from torchslim.bench import BENCHMARKS, table
from torchslim.bench.report import row_command
from torchslim.cli import build_parser
from torchslim.recipes import builtin_recipes
from torchslim.workloads import workload_names

ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = "../shared/data"  # what BENCHMARKS.md is rendered with (report's --data-root)
SUBCOMMANDS = {"measure", "compress", "bench", "tune"}


def md_commands(text: str) -> list[tuple[str, str | None, str]]:
    """``(benchmark, variant or None for the section's bench command, command)`` for every command in ``text``."""
    out: list[tuple[str, str | None, str]] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("`torchslim "):
            out.append((section, None, line.split("`")[1]))
        elif line.startswith("| ") and section in BENCHMARKS:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if cells[0] != "variant" and cells[-1].startswith("`"):
                out.append((section, cells[0], cells[-1].strip("`")))
    return out


def problems(command: str) -> list[str]:
    """What is wrong with ``command`` as a user would run it from the repository root (empty: nothing)."""
    argv = shlex.split(command)
    if argv[0] != "torchslim" or len(argv) < 2 or argv[1] not in SUBCOMMANDS:
        return [f"not a torchslim {'/'.join(sorted(SUBCOMMANDS))} command"]
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        return [f"the CLI rejects it (exit {e.code})"]
    found = []
    if getattr(args, "workload", None) is not None and args.workload not in workload_names():
        found.append(f"unknown workload {args.workload!r}")
    if getattr(args, "recipe", None) is not None and args.recipe not in builtin_recipes():
        found.append(f"unknown built-in recipe {args.recipe!r}")
    if argv[1] == "bench" and args.name not in BENCHMARKS:
        found.append(f"unknown benchmark {args.name!r}")
    if getattr(args, "data", None) and not (ROOT / args.data).exists():
        found.append(f"--data {args.data} does not exist relative to the repository root")
    return found


def _md() -> str:
    return (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")


def test_every_command_in_benchmarks_md_parses_and_names_what_exists() -> None:
    if not (ROOT / DATA_ROOT).is_dir():
        pytest.skip(f"the shared data ({DATA_ROOT}) is not beside this checkout")
    commands = md_commands(_md())
    assert len(commands) > 50
    bad = {cmd: p for _, _, cmd in commands if (p := problems(cmd))}
    assert not bad, bad


def test_benchmarks_md_commands_are_what_the_generator_renders_now() -> None:
    for bench, variant, command in md_commands(_md()):
        if variant is not None:
            assert command == row_command(bench, variant, DATA_ROOT), (bench, variant)


def test_every_row_of_the_committed_json_has_a_valid_command() -> None:
    if not (ROOT / DATA_ROOT).is_dir():
        pytest.skip(f"the shared data ({DATA_ROOT}) is not beside this checkout")
    for path in sorted((ROOT / "bench").glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
            command = row_command(path.stem, row["variant"], DATA_ROOT)
            assert not problems(command), (path.name, row["variant"], command, problems(command))


def test_old_style_commands_are_caught() -> None:
    # The commands BENCHMARKS.md printed before: the workload name cut at "-".
    assert problems("torchslim measure --workload fsdd --data ../shared/data/fsdd/recordings")
    assert problems("torchslim compress --workload llama --recipe bf16 --out out/bf16")
    assert problems("torchslim compress --workload digits --recipe no-such-recipe --out out/x")
    assert problems("torchslim bench digits --data no/such/folder")


def test_bench_modules_declare_their_workload_and_real_recipes() -> None:
    recipes = builtin_recipes()
    for name in BENCHMARKS:
        declared = table(name)
        assert declared.workload in workload_names(), name
        assert set(declared.recipes.values()) <= set(recipes), name


def test_minilm_int8_row_is_the_compiled_recipe_the_bench_builds_it_from() -> None:
    from torchslim.bench.harness import recipe_config
    from torchslim.bench.minilm import configs
    from torchslim.quantization import Int8Dynamic

    command = row_command("minilm-stsb", "torchslim-int8-dynamic", DATA_ROOT)
    assert shlex.split(command)[shlex.split(command).index("--recipe") + 1] == "int8-dynamic-compiled"
    row = next(r for r in md_commands(_md()) if r[:2] == ("minilm-stsb", "torchslim-int8-dynamic"))
    assert "--recipe int8-dynamic-compiled " in row[2]
    compiled = recipe_config("int8-dynamic-compiled")
    assert configs()["torchslim-int8-dynamic"] == compiled
    # The configuration that produced the committed 2.96x row (outlier channels, bf16 compute, compiled).
    assert compiled == Int8Dynamic(
        compile=True, compute_dtype="bfloat16", smoothquant=0.5, min_sqnr_db=33.0, outliers=32, fallback="float32"
    )
    eager = configs()["torchslim-int8-dynamic-eager"]
    assert (eager.compile, eager.compute_dtype, eager.outliers) == (False, "float32", 32)


@pytest.mark.parametrize("bench", ["digits-tune", "minilm-tune"])
def test_tuned_row_passes_tune_the_bench_settings(bench: str) -> None:
    module = import_module(BENCHMARKS[bench].partition(":")[0])
    args = build_parser().parse_args(shlex.split(row_command(bench, "torchslim-tuned", DATA_ROOT))[1:])
    settings = module.tune_settings()
    assert args.command == "tune" and args.workload == table(bench).workload
    assert (args.max_drop, args.margin, args.objective, args.trials) == (
        settings["max_drop"],
        settings["margin"],
        settings["objective"],
        settings["trials"],
    )
    assert args.threads == settings.get("threads", 1) and args.builtins == "none"
    assert args.latency_runs == settings.get("latency_runs", 20)


def test_rows_not_built_from_a_recipe_point_at_their_benchmark() -> None:
    # minilm-prune's wanda-50 row calibrates on 32 batches of encoder layers only: not the wanda-50 recipe.
    assert row_command("minilm-prune", "torchslim-wanda-50", DATA_ROOT).startswith("torchslim bench minilm-prune ")
    # llama-decode's int4 row is bf16 + RTN; the int4-g128 recipe is GPTQ.
    assert row_command("llama-decode", "torchslim-int4-g128", DATA_ROOT) == "torchslim bench llama-decode"
    assert re.fullmatch(r"torchslim bench digits-prune", row_command("digits-prune", "torchslim-gradual-90", DATA_ROOT))
