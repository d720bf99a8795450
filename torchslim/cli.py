"""The ``torchslim`` command line: demo, measure, compress, recipes, bench.

Exit codes (README "Command line"): 0 ok, 2 usage, 3 bad config, 4 unsafe input, 5 unsupported model,
6 quality gate failed, 7 output exists or I/O error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchslim.cliargs import WORKLOAD_HELP, add_device_arg, check_device
from torchslim.io.jsonfile import write_json

EPILOG = """examples:
  torchslim demo                                   # digits: baseline -> built-in 'default' recipe -> table
  torchslim recipes                                # list built-in recipes
  torchslim measure --workload digits --json m.json
  torchslim compress --workload mycnn:MyCNN --recipe int8-static --out out/mycnn   # your own Workload in ./mycnn.py
  torchslim measure --model hf:./my-bert           # a local Hugging Face folder
  torchslim compress --workload digits --recipe default --out out/digits
  torchslim compress --model torchslim.workloads.digits:build_teacher --weights w.safetensors \\
      --recipe my.yaml --out out/mine --force
  torchslim export out/digits --workload digits --format onnx
  torchslim bench digits --quick --json bench.json
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: exit 2 with the usage line
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _console() -> Any:
    from rich.console import Console

    # Piped into a log or CI: a wide fixed width instead of 80 columns, so tables don't wrap.
    return Console(width=None if sys.stdout.isatty() else 160)


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    from torchslim.workloads import workload_names

    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--workload", help=WORKLOAD_HELP.format(names=", ".join(workload_names())))
    g.add_argument(
        "--model",
        help="pkg.module:factory building your model (the module may define example_inputs()), "
        "or hf:DIR, a local Hugging Face folder; data-free recipes only: use --workload to give data",
    )
    p.add_argument("--weights", help="with --model: weights (.safetensors, or .pt via torch.load(weights_only=True))")
    p.add_argument("--data", help="data path for workloads that read a data set (passed to a user workload's factory)")
    p.add_argument("--latency-runs", type=int, default=30, help="timed runs per latency measurement (default 30)")


def _to_device(model: Any, ctx: Any, device: str) -> tuple[Any, Any]:
    """``model`` and ``ctx`` (its device and example inputs) moved to ``device``."""
    import dataclasses

    if device == "cpu" and ctx.device == "cpu":
        return model, ctx
    from torchslim.core.batches import to_device

    return model.to(device), dataclasses.replace(
        ctx, device=device, example_inputs=to_device(ctx.example_inputs, device)
    )


def _resolve_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, Context) from --workload or --model/--weights, on --device."""
    device = check_device(getattr(args, "device", "cpu"))  # refuse an absent device before any work
    model, ctx = _build_model(args)
    return _to_device(model, ctx, device)


def _build_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch.nn as nn

    from torchslim.core.context import Context
    from torchslim.errors import UnsafeInputError, UsageError
    from torchslim.workloads.user import resolve_model_factory, resolve_workload

    if args.workload:
        if args.weights:
            raise UsageError("--weights needs --model (a workload loads its own weights)")
        wl = resolve_workload(args.workload, data=args.data)
        return wl.model(), wl.context()
    factory, example = resolve_model_factory(args.model)
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"{args.model} returned {type(model).__name__}, not a torch.nn.Module")
    if args.weights:
        from torchslim.io import load_state_dict_file

        state = load_state_dict_file(args.weights)
        result = model.load_state_dict(state, strict=False)
        problems = [f"missing: {k}" for k in result.missing_keys] + [f"unexpected: {k}" for k in result.unexpected_keys]
        if problems:
            raise UnsafeInputError(f"{args.weights} does not match {args.model}:\n  " + "\n  ".join(problems))
    model.eval()
    return model, Context(example_inputs=example() if example is not None else None)


def cmd_recipes(args: argparse.Namespace) -> int:
    from torchslim.recipes import builtin_recipes

    recipes = builtin_recipes()
    width = max(len(n) for n in recipes)
    for name, r in recipes.items():
        print(f"{name.ljust(width)}  {r.description}")
    write_json(args.json, {name: r.to_dict() for name, r in recipes.items()})
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from torchslim.measure import measure, print_table

    model, ctx = _resolve_model(args)
    report = measure(model, ctx, latency_runs=args.latency_runs)
    print_table([(args.workload or args.model, report)], console=_console())
    write_json(args.json, report.to_dict())
    return 0


def _compress(model: Any, ctx: Any, recipe_source: str, latency_runs: int, main: bool = True) -> tuple[Any, Any]:
    """Run the recipe; ``main=False`` (a torchrun rank other than 0): no measurements, no progress."""
    from torchslim.recipes import load_recipe, run_recipe

    recipe = load_recipe(recipe_source)
    return run_recipe(model, recipe, ctx, latency_runs=latency_runs, measure_steps=main, progress=main)


def _preflight_compress(model: Any, ctx: Any, args: argparse.Namespace) -> None:
    from torchslim.measure.memory import estimate_compress, preflight
    from torchslim.recipes import load_recipe

    steps = [s.config for s in load_recipe(args.recipe).steps]
    hf = str(args.model or "").startswith("hf:")
    estimate = estimate_compress(model, steps, calibration=ctx.calibration, example_inputs=ctx.example_inputs, hf=hf)
    preflight(estimate, "compress")


def cmd_compress(args: argparse.Namespace) -> int:
    from torchslim.errors import ConfigError
    from torchslim.io import check_output_dir, save

    check_output_dir(Path(args.out), args.force)  # fail before any long work
    from torchslim.calibration.distributed import torchrun_calibration
    from torchslim.errors import UsageError
    from torchslim.sequential.cli import compress_command, wants_sequential

    if wants_sequential(args):  # --sequential, or an hf:DIR model that would not fit in memory
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("compress --sequential runs in one process, not under torchrun")
        return compress_command(args)
    with torchrun_calibration() as shard:  # torchrun: each rank calibrates on its share (README: torchrun)
        model, ctx = _resolve_model(args)
        if not args.no_preflight and ctx.device == "cpu":
            _preflight_compress(model, ctx, args)  # refuse (exit 5) a recipe that cannot fit in memory
        try:
            model, run = _compress(model, ctx, args.recipe, args.latency_runs, main=shard.is_main)
        except ConfigError as e:
            if args.model and "data" in str(e):  # calibration / training data: --model has none to give
                raise ConfigError(
                    f"{e}; --model brings no data: give --workload pkg.mod:NAME, a Workload with your data "
                    "(README: Your own model)"
                ) from None
            raise
    if not shard.is_main:
        return 0  # rank 0 prints and writes
    run.print(console=_console())
    save(
        model,
        args.out,
        force=args.force,
        recipe=run.recipe,
        report=run.to_dict(),
        seed=run.recipe.seed + ctx.seed,
        source=args.model,  # ts.load and export rebuild the model from it (hf:DIR: its stored config)
    )
    print(f"wrote {args.out}")
    write_json(args.json, run.to_dict())
    return 0


def _resolve_factory(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...] | None]:
    """(factory, example_inputs) from --workload or --model, without building or training anything;
    (None, None) when neither is given (the artifact records its source)."""
    from torchslim.workloads.user import resolve_model_factory, resolve_workload

    if args.workload:
        wl = resolve_workload(args.workload, data=args.data)
        return wl.factory, wl.example_inputs()
    if not args.model:
        return None, None
    factory, example = resolve_model_factory(args.model)
    return factory, example() if example is not None else None


def _example_for_artifact(model: Any) -> Any:
    """Example inputs for an artifact rebuilt without --model/--workload: a transformers model's own (from its
    config), else None (a recorded ``pkg.mod:factory`` is rebuilt only when --model names it)."""
    if getattr(getattr(model, "config", None), "to_dict", None) is None:
        return None
    from torchslim.io.hf import hf_example_inputs

    return hf_example_inputs(model)


def cmd_export(args: argparse.Namespace) -> int:
    from torchslim.errors import UsageError
    from torchslim.export import export_onnx, export_pt2
    from torchslim.io import load
    from torchslim.io.atomic import writer_lock

    out = Path(args.out) if args.out else Path(str(Path(args.artifact)) + f".{args.format}")
    with writer_lock(out):  # one export of a file at a time: a second one meanwhile exits 7
        factory, example_inputs = _resolve_factory(args)
        if factory is not None and example_inputs is None:
            raise UsageError(f"{args.model} has no example_inputs(); define it in the factory's module to export")
        model = load(args.artifact, factory=factory)  # without a factory: rebuilt from the source it records
        if example_inputs is None:
            example_inputs = _example_for_artifact(model)
        if example_inputs is None:
            raise UsageError(
                f"{args.artifact}: no example inputs; give --model pkg.mod:factory whose module defines them"
            )
        fn = export_onnx if args.format == "onnx" else export_pt2
        err = fn(model, example_inputs, out)
    print(f"wrote {out} (max abs difference to torch outputs: {err:.3g})")
    write_json(args.json, {"path": str(out), "format": args.format, "max_abs_error": err})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from torchslim.recipes import load_recipe, run_recipe
    from torchslim.workloads import get_workload

    console = _console()
    start = time.perf_counter()
    wl = get_workload("digits")
    console.print("[bold]torchslim demo[/bold]: digits teacher CNN (scikit-learn handwritten digits, 8x8)")
    model = wl.model()
    ctx = wl.context()
    recipe = load_recipe(args.recipe)
    console.print(f"recipe [bold]{recipe.name}[/bold]: {recipe.description}")
    model, run = run_recipe(model, recipe, ctx, latency_runs=args.latency_runs)
    run.print(console=console)
    d = run.final.diff(run.baseline)
    console.print(
        f"result: {1 / d['size_ratio']:.1f}x smaller, {d['speedup']:.2f}x faster (batch "
        f"{ctx.example_inputs[0].shape[0]}), test accuracy {run.baseline.quality['accuracy']:.4f} -> "
        f"{run.final.quality['accuracy']:.4f}  ({time.perf_counter() - start:.1f} s)"
    )
    write_json(args.json, run.to_dict())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from torchslim.bench import run_named_benchmark

    result = run_named_benchmark(args.name, data=args.data, quick=args.quick)
    result.print(console=_console())
    write_json(args.json, result.to_dict())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from torchslim.bench import benchmark_names
    from torchslim.measure.memory import add_preflight_arg

    parser = _Parser(
        prog="torchslim",
        description="Make trained PyTorch models smaller and faster while keeping their quality.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("demo", help="digits: baseline -> built-in recipe -> before/after table")
    p.add_argument("--recipe", default="default", help="recipe file or built-in name (default: default)")
    p.add_argument("--latency-runs", type=int, default=30)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("measure", help="params, non-zeros, size, MACs, latency and quality of one model")
    _add_model_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("compress", help="run a recipe, save the artifact, print the before/after report")
    _add_model_args(p)
    add_device_arg(p)
    p.add_argument("--recipe", required=True, help="recipe YAML file or built-in name (`torchslim recipes`)")
    p.add_argument("--out", required=True, help="artifact folder (must be empty or absent unless --force)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing artifact (only once the new one is complete)"
    )
    add_preflight_arg(p)
    from torchslim.sequential.cli import SEQUENTIAL_HELP

    p.add_argument("--sequential", action="store_true", help=SEQUENTIAL_HELP)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("export", help="export an artifact to ONNX (verified in ONNX Runtime) or torch.export .pt2")
    p.add_argument("artifact", help="artifact folder written by `torchslim compress`")
    _add_model_args(p, required=False)  # not needed when the artifact records its --model source
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--out", help="output file (default: ARTIFACT.onnx or ARTIFACT.pt2 beside the folder)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("recipes", help="list the built-in recipes")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("bench", help="a benchmark, ours and peers in one process: table + JSON")
    p.add_argument("name", help=f"one of: {', '.join(benchmark_names())}")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions (never a smaller evaluation set)")
    p.add_argument("--data", help="data folder or file for benchmarks that read a data set")
    p.set_defaults(func=cmd_bench)

    from torchslim.distillation.cli import add_distill_parser

    add_distill_parser(sub)  # torchslim distill: knowledge distillation, one process or torchrun

    from torchslim.tuning.cli import add_tuning_parsers

    add_tuning_parsers(sub)  # torchslim tune / torchslim sensitivity: accuracy-aware search

    for action in sub.choices.values():
        action.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    return parser


def _version() -> str:
    from torchslim import __version__

    return f"torchslim {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (errors print their message, not a traceback).

    A torchslim error prints its message and returns its exit code; Ctrl-C returns 130; any other
    exception prints one line naming it and the file holding its full traceback, and returns 1.
    """
    from torchslim.errors import TorchslimError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TorchslimError as e:
        print(f"torchslim: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("torchslim: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (anything unexpected: one line, the traceback goes to a file)
        from torchslim.crashlog import write_traceback

        where = write_traceback(e, argv if argv is not None else sys.argv[1:])
        message = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"torchslim: internal error: {type(e).__name__}: {message} (full traceback in {where})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
