"""``torchslim tune`` and ``torchslim sensitivity``.

Search (TPE on one objective, NSGA-II on size and latency), resumable: run the same command again::

    torchslim tune --workload digits --max-drop 0.01 --objective size --trials 40 --out out/tune-digits

Two workers on one study (each its own ``--worker``; together they complete ``--trials``)::

    torchslim tune --workload digits --max-drop 0.01 --trials 40 --out out/t --worker 0 &
    torchslim tune --workload digits --max-drop 0.01 --trials 40 --out out/t --worker 1

Workers on several machines share a PostgreSQL study (the same command on each, its own ``--worker``)::

    torchslim tune --workload digits --max-drop 0.01 --trials 40 --out out/t --worker 0 \
        --storage postgresql://tune:PASSWORD@db-host:5432/studies

Per-layer sensitivity (table + bar chart)::

    torchslim sensitivity --workload digits --ratio 0.5 --out out/sens

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_tuning_parsers(sub)
    >>> sorted(sub.choices)
    ['sensitivity', 'tune']
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_tuning_parsers", "cmd_sensitivity", "cmd_tune"]


def add_tuning_parsers(sub: Any) -> None:
    """Add the ``tune`` and ``sensitivity`` subcommands to the CLI's subparsers."""
    from torchslim.cliargs import add_device_arg, add_workload_arg
    from torchslim.measure.memory import add_preflight_arg
    from torchslim.tuning.options import OBJECTIVES

    p = sub.add_parser("tune", help="accuracy-aware search: the smallest/fastest recipe within a quality budget")
    add_workload_arg(p)
    add_device_arg(p)
    p.add_argument(
        "--max-drop",
        type=float,
        required=True,
        help="largest allowed drop of the workload's metric on its validation split, in the metric's units "
        "(digits accuracy is a fraction: 1 point = 0.01; minilm-stsb Spearman x100: 1 point = 1.0)",
    )
    p.add_argument("--objective", choices=OBJECTIVES, default="size", help="size, latency, or both (Pareto front)")
    p.add_argument("--trials", type=int, default=30, help="complete + pruned trials in total, over restarts (30)")
    p.add_argument("--out", required=True, help="folder: best.yaml, pareto.png, report.md, trials.json, study.db")
    p.add_argument(
        "--storage",
        help="Optuna storage URL shared by workers, e.g. postgresql://USER:PASSWORD@HOST:5432/DB for workers on "
        "several machines (default sqlite:///OUT/study.db)",
    )
    p.add_argument(
        "--heartbeat", type=int, default=5, help="seconds between a worker's heartbeats on its running trial (5)"
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=20,
        help="seconds without a heartbeat after which a worker counts as killed: its trial is marked failed and "
        "queued again (20)",
    )
    p.add_argument("--seed", type=int, default=0, help="recipe and sampler seed (0)")
    p.add_argument("--worker", type=int, default=0, help="worker index when several share the study (0)")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per latency measurement (20)")
    p.add_argument(
        "--recover-limit",
        type=float,
        help="prune trials whose drop before fine-tuning/distillation exceeds this (--space composed: whose drop "
        "at any distillation evaluation does)",
    )
    p.add_argument("--builtins", help="comma-separated built-in recipes to compare (default all; 'none')")
    p.add_argument("--peers", help="a `torchslim bench --json` file whose peer rows are added to the plot")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    p.add_argument(
        "--confirm",
        type=int,
        default=3,
        help="rebuild up to N of the best feasible trials that train with another seed; keep the best whose mean "
        "judged drop stays within budget (3; 0: off)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="standard errors of the per-example drop added to the measured drop before the budget check, where "
        "the workload scores examples one by one (digits); guards against validation luck (1.0; 0: off)",
    )
    p.add_argument(
        "--space",
        choices=("default", "composed"),
        default="default",
        help="default: the workload's space (minilm-stsb: post-training techniques); composed: blocks kept, "
        "head/FFN ratios, distillation epochs and lr, int8/int4 per layer group, embedding format, chained with "
        "distillation (trials train: tens of minutes each on MiniLM)",
    )
    p.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="RECIPE",
        help="with --space composed: a built-in recipe name or YAML file whose point is queued first (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_preflight_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("sensitivity", help="per-layer metric drop when only that layer is quantized or pruned")
    add_workload_arg(p)
    add_device_arg(p)
    p.add_argument("--methods", default="int8,int4,prune", help="comma-separated: int8, int4, prune (all)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of a layer's weights pruned (0.5)")
    p.add_argument("--granularity", choices=("layer", "block"), default="layer")
    p.add_argument("--split", help="evaluation split (default: the workload's selection split, val where it has one)")
    p.add_argument("--out", required=True, help="folder: sensitivity.md, sensitivity.json, sensitivity.png")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sensitivity)


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [] if value.strip() == "none" else [v.strip() for v in value.split(",") if v.strip()]


def _workload(args: argparse.Namespace, command: str) -> Any:
    """The workload of ``--workload`` on ``--device``; refused (exit 3) when it has no quality metric."""
    from torchslim.cliargs import check_device
    from torchslim.errors import ConfigError
    from torchslim.workloads.user import resolve_workload

    device = check_device(args.device)
    wl = resolve_workload(args.workload, data=args.data)
    problem = wl.quality_problem()
    if problem:
        raise ConfigError(f"{command} needs a quality metric to keep: {problem}; use `torchslim measure` for speed")
    if device != "cpu":
        from torchslim.workloads.device import OnDevice

        wl = OnDevice(wl, device)
    return wl


def _preflight_tune(wl: Any) -> Any:
    """The memory check of ``tune`` on the workload's model (refused: exit 5); returns that model, for ``tune``
    to take as its baseline, so the model is built once."""
    from torchslim.measure.memory import estimate_tune, preflight

    model = wl.model()
    preflight(estimate_tune(model, wl.example_inputs(), wl.calibration()), "tune")
    return model


def cmd_tune(args: argparse.Namespace) -> int:
    """Run ``torchslim tune``; exit 6 when no trial meets the budget."""
    from torchslim.errors import QualityGateError
    from torchslim.io.jsonfile import write_json
    from torchslim.tuning.report import compare_builtins
    from torchslim.tuning.tune import TuneOptions, tune

    options = TuneOptions(
        max_drop=args.max_drop,
        objective=args.objective,
        trials=args.trials,
        out=args.out,
        storage=args.storage,
        heartbeat_interval=args.heartbeat,
        grace_period=args.grace_period,
        seed=args.seed,
        worker=args.worker,
        data=args.data,
        latency_runs=args.latency_runs,
        recover_limit=args.recover_limit,
        builtins=_names(args.builtins),
        peers=args.peers,
        threads=args.threads,
        progress=not args.no_progress,
        confirm=args.confirm,
        margin=args.margin,
        composed=args.space == "composed",
        start=tuple(args.start),
    )  # checked before the workload loads: a bad flag fails fast (exit 3; unknown objective: exit 2)
    wl = _workload(args, "tune")
    model = None  # tune builds the baseline itself
    if not args.no_preflight and args.device == "cpu":
        model = _preflight_tune(wl)  # refuse (exit 5) a search whose trials cannot fit in memory
    result = tune(wl, options, model=model)
    for name, path in result.paths.items():
        print(f"wrote {path} ({name})")
    c = result.chosen
    summary = {"completed": result.completed, "baseline": result.baseline, "chosen": c, "builtins": result.builtins}
    write_json(args.json, summary)
    if c is None:
        raise QualityGateError(f"no trial met --max-drop {args.max_drop:g}; see {result.paths['report']}")
    print(
        f"best: trial {c['number']} ({c.get('description', '')}): {c['size_bytes'] / 1e3:.1f} KB, "
        f"{c['latency_ms']:.3f} ms, val {c['quality']:.4f} (drop {c['drop']:.4f}), test {c['test_quality']:.4f}"
    )
    print(compare_builtins(c, result.builtins, args.objective))
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Run ``torchslim sensitivity``."""
    from torchslim.io.jsonfile import write_json
    from torchslim.tuning.sensitivity import sensitivity

    result = sensitivity(
        _workload(args, "sensitivity"),
        methods=_names(args.methods) or [],
        ratio=args.ratio,
        granularity=args.granularity,
        split=args.split,
        data=args.data,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(result.to_markdown())
    for path in result.write(args.out).values():
        print(f"wrote {path}")
    write_json(args.json, result.to_dict())
    return 0
