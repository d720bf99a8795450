"""``torchslim distill``: distil a workload's teacher into a student, on one process or many with torchrun.

One process (the student starts from scratch; without ``--epochs``/``--lr`` or a config giving them,
the command trains :data:`SCRATCH_EPOCHS` epochs at learning rate :data:`SCRATCH_LR`, and warns when the
student ends far below its teacher)::

    torchslim distill --workload digits --epochs 100 --lr 0.01 --alpha 0.5 --out out/kd

Data-parallel on N processes (gloo on CPU, NCCL on GPU; several machines through torchrun's rendezvous)::

    torchrun --nproc_per_node 2 -m torchslim distill --workload digits --epochs 100 --out out/kd

``--batch-size`` is the global batch: N processes each take ``batch_size / N`` samples per step, so
the steps, schedule and loss are those of one process. Rank 0 shows progress, evaluates on the
validation split, checkpoints and writes ``--out`` and ``--json``. ``--parallel fsdp`` (or ``auto``,
the default, when DDP's training state would not fit one rank) shards the student over the processes
with FSDP2 (:mod:`torchslim.distillation.sharding`); rank 0 still writes the whole student.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["FAR_BELOW", "SCRATCH_EPOCHS", "SCRATCH_LR", "add_distill_parser", "cmd_distill", "far_below"]

# A student built by a factory starts from random weights: DistillConfig's defaults (3 epochs at 1e-3,
# meant for a recipe step that distils an already-trained compressed copy) leave it near chance
# (`torchslim distill --workload digits --epochs 3 --lr 0.001`); these bring the digits student within
# FAR_BELOW of its teacher (tests/distillation/test_distill_defaults.py).
SCRATCH_EPOCHS = 30
SCRATCH_LR = 1e-2
# The student is "far below" its teacher when it loses more than this fraction of the teacher's metric.
FAR_BELOW = 0.10

_FLAGS = {
    "epochs": int,
    "lr": float,
    "temperature": float,
    "alpha": float,
    "batch_size": int,
    "eval_every": int,
    "patience": int,
    "checkpoint_every": int,
    "seed": int,
}


def add_distill_parser(sub: Any) -> None:
    """Add the ``distill`` subcommand to the CLI's subparsers."""
    from torchslim.cliargs import add_device_arg, add_workload_arg
    from torchslim.measure.memory import add_preflight_arg

    p = sub.add_parser("distill", help="train a small student from a workload's teacher (knowledge distillation)")
    add_workload_arg(p)  # the teacher, data and metric
    add_device_arg(p)
    p.add_argument(
        "--student",
        help="pkg.module:factory building the untrained student (default: the workload module's build_student)",
    )
    p.add_argument("--config", help="YAML or JSON file with DistillConfig fields; flags below override it")
    scratch = {"epochs": f" (default {SCRATCH_EPOCHS})", "lr": f" (default {SCRATCH_LR:g})"}
    for name, tp in _FLAGS.items():
        help_ = f"DistillConfig.{name}{scratch.get(name, '')}"
        p.add_argument(f"--{name.replace('_', '-')}", type=tp, default=None, help=help_)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="DistillConfig.precision")
    p.add_argument("--checkpoint-dir", help="checkpoint here and resume from it (refused if the config changed)")
    p.add_argument("--out", help="write the student here (safetensors, config, report; atomic)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-eval", action="store_true", help="no validation passes (keeps the last weights)")
    p.add_argument(
        "--parallel",
        choices=("auto", "ddp", "fsdp"),
        default="auto",
        help="under torchrun: DDP (a whole student per rank) or FSDP2 (the student sharded over the ranks); "
        "auto: FSDP when DDP's training state would not fit one rank's memory (default)",
    )
    add_preflight_arg(p)
    p.set_defaults(func=cmd_distill)


def _config(args: argparse.Namespace) -> Any:
    import yaml

    from torchslim.core.config import config_from_dict
    from torchslim.distillation.config import DistillConfig
    from torchslim.errors import ConfigError, UnsafeInputError, UsageError

    data: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"no config file {path}")
        if path.stat().st_size > 1_000_000:
            raise UnsafeInputError(f"config {path} is larger than 1 MB; refusing to read it")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {path} is not valid safe YAML/JSON", [str(e).replace("\n", " ")]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of DistillConfig fields")
    for name in (*_FLAGS, "precision"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    data.setdefault("kind", DistillConfig.kind)
    data.setdefault("epochs", SCRATCH_EPOCHS)  # a student from scratch needs a longer, faster schedule
    data.setdefault("lr", SCRATCH_LR)
    return config_from_dict(data, path="distill", expected=DistillConfig)


def far_below(student: float, teacher: float, higher_is_better: bool = True) -> bool:
    """Whether ``student`` loses more than :data:`FAR_BELOW` of ``teacher``'s metric.

    Example:
        >>> far_below(0.19, 0.99), far_below(0.96, 0.99), far_below(9.0, 5.0, higher_is_better=False)
        (True, False, True)
    """
    loss = (teacher - student) if higher_is_better else (student - teacher)
    return loss > FAR_BELOW * abs(teacher)


def _student_factory(args: argparse.Namespace, workload: Any) -> Any:
    from torchslim.errors import UsageError
    from torchslim.workloads.user import import_target

    if args.student:
        _, factory = import_target(args.student, "--student")
        if not callable(factory):
            raise UsageError(f"--student {args.student} is not callable; name a function building the student")
        return factory
    module = importlib.import_module(type(workload).__module__)
    factory = getattr(module, "build_student", None)
    if not callable(factory):
        raise UsageError(f"{module.__name__} has no build_student(); give --student pkg.module:factory")
    return factory


def _train_data(workload: Any) -> Any:
    """A map-style Dataset when the workload holds its training split as tensors (DistributedSampler
    shards it), else the workload's callable of batches (each process keeps its share of every batch)."""
    from torch.utils.data import TensorDataset

    splits = getattr(workload, "splits", None)
    if callable(splits):
        s = splits()
        if "train_x" in s and "train_y" in s:
            return TensorDataset(s["train_x"], s["train_y"])
    data = workload.train_data()
    if data is None:
        from torchslim.errors import UsageError

        raise UsageError(f"workload {workload.name!r} has no training data")
    return data


def cmd_distill(args: argparse.Namespace) -> int:
    """Run ``torchslim distill`` (see the module docstring); returns the exit code."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from torchslim.cliargs import check_device
    from torchslim.distillation.distributed import init_from_env
    from torchslim.distillation.sharding import resolve_parallel
    from torchslim.distillation.trainer import train_distill
    from torchslim.io import atomic_dir, check_output_dir
    from torchslim.io.jsonfile import write_json
    from torchslim.version import __version__
    from torchslim.workloads.user import resolve_workload

    config = _config(args)  # fail on a bad config before any work
    device = check_device(args.device)
    if args.out:
        check_output_dir(Path(args.out), args.force)
    info = init_from_env()
    finished = False
    try:
        wl = resolve_workload(args.workload, data=args.data)
        teacher = wl.model().to(device)
        factory = _student_factory(args, wl)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the same initial student on every process
            student = factory().to(device)
        parallel, why = resolve_parallel(args.parallel, student, teacher, info)
        if why and info.is_main:
            print(why, file=sys.stderr, flush=True)
        if not args.no_preflight and device == "cpu":  # refuse (exit 5) a run that cannot fit in memory
            from torchslim.measure.memory import estimate_distill, preflight

            per_process = max(1, config.batch_size // info.world_size)
            shards = info.world_size if parallel == "fsdp" else 1
            preflight(estimate_distill(teacher, student, wl.example_inputs(), per_process, shards), "distill")
        split = getattr(wl, "selection_split", "val")
        eval_fn = None if args.no_eval else (lambda m: wl.evaluate(m, split))
        run = train_distill(
            student,
            teacher,
            _train_data(wl),
            config,
            eval_fn=eval_fn,
            higher_is_better=wl.higher_is_better,
            checkpoint_dir=args.checkpoint_dir,
            desc=f"distill {wl.name}",
            device=device,
            parallel=parallel if parallel != "none" else "auto",
        )
        if not info.is_main:
            finished = True
            return 0
        result = {
            "workload": wl.name,
            "config": config.to_dict(),
            "processes": info.world_size,
            "parallel": run.parallel,
            "threads_per_process": torch.get_num_threads(),
            "steps": run.steps,
            "seconds": run.seconds,
            "samples_per_s": run.samples_per_second,
            "stopped_early": run.stopped_early,
            "teacher": wl.evaluate(teacher, "test"),
            "student": wl.evaluate(run.student, "test"),
            "history": run.history,
            "evals": run.evals,
        }
        metric = wl.metric
        print(
            f"distilled {wl.name} on {info.world_size} process(es): {run.steps} steps in {run.seconds:.1f} s "
            f"({run.samples_per_second:.0f} samples/s); test {metric}: teacher {result['teacher'][metric]:.4f}, "
            f"student {result['student'][metric]:.4f}"
        )
        if far_below(result["student"][metric], result["teacher"][metric], wl.higher_is_better):
            print(
                f"torchslim: warning: the student's test {metric} {result['student'][metric]:.4f} is far below the "
                f"teacher's {result['teacher'][metric]:.4f} (more than {FAR_BELOW:.0%} lower); train longer "
                f"(--epochs {config.epochs * 3}) or at another --lr (now {config.lr:g}), or give a larger --student",
                file=sys.stderr,
            )
        if args.out:
            manifest = {"torchslim": __version__, "torch": torch.__version__, "seed": config.seed}
            with atomic_dir(args.out, force=args.force, manifest=manifest) as tmp:
                state = {k: v.detach().contiguous().clone() for k, v in run.student.state_dict().items()}
                save_file(state, str(tmp / "model.safetensors"))
                (tmp / "distill.json").write_text(config.to_json() + "\n", encoding="utf-8")
                report = {k: v for k, v in result.items() if k != "history"}
                (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.out}")
        write_json(args.json, result)
        finished = True
        return 0
    finally:
        if info.distributed and dist.is_initialized():
            if finished:
                # Wait for rank 0's evaluation and writing: a rank that tears the group down while another
                # is still inside gloo makes that one abort ("terminate called without an active exception").
                dist.barrier()
            dist.destroy_process_group()
