"""Recipes: ordered steps (config + select) loaded safely from YAML and run with a measurement after each.

A recipe file is data, never code: it is read with ``yaml.safe_load`` (``!!python/...`` tags are
refused), every step is built from the config allow-list, and all problems are reported at once with
their field paths.

Example:
    >>> recipe = recipe_from_dict({"name": "half", "steps": [{"kind": "cast-dtype", "dtype": "bfloat16"}]})
    >>> [s.config.kind for s in recipe.steps]
    ['cast-dtype']
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from torchslim.core.config import Config, build_config, convert_value
from torchslim.core.context import Context, EvalFn
from torchslim.core.progress import format_duration
from torchslim.core.progress import progress as progress_task
from torchslim.core.select import Select
from torchslim.errors import ConfigError, UnsafeInputError, UsageError
from torchslim.measure import Report, measure, print_table, to_markdown

MAX_RECIPE_BYTES = 1_000_000
MAX_RECIPE_VALUES = 100_000  # a recipe is a few steps of a few fields


@dataclass(frozen=True)
class Step:
    """One recipe step: a technique config, the modules it touches, and a display name."""

    config: Config
    select: Select | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.config.kind

    def to_dict(self) -> dict[str, Any]:
        out = self.config.to_dict()
        if self.select is not None:
            out["select"] = {k: v for k, v in self.select.to_dict().items() if k != "kind"}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class Recipe:
    """A named, ordered list of steps."""

    name: str
    steps: tuple[Step, ...]
    description: str = ""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_RECIPE_KEYS = {"name": str, "description": str, "seed": int, "steps": list}


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    """Validate plain data into a Recipe; ConfigError lists every problem with its field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid recipe {source}", [f"{source}: expected a mapping with 'steps', got {data!r}"])
    problems: list[str] = []
    for key in data:
        if key not in _RECIPE_KEYS:
            problems.append(f"{key}: unknown key; valid keys: {', '.join(_RECIPE_KEYS)}")
    for key, tp in _RECIPE_KEYS.items():
        if key in data and not (isinstance(data[key], tp) and not isinstance(data[key], bool)):
            problems.append(f"{key}: expected {tp.__name__}, got {data[key]!r}")
    raw_steps = data.get("steps")
    if raw_steps is None:
        problems.append("steps: required field missing")
        raw_steps = []
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        path = f"steps[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{path}: expected a mapping with 'kind', got {raw!r}")
            continue
        raw = dict(raw)
        select_raw = raw.pop("select", None)
        name = raw.pop("name", "")
        if not isinstance(name, str):
            problems.append(f"{path}.name: expected string, got {name!r}")
            name = ""
        select = None
        if select_raw is not None:
            select = convert_value(select_raw, Select, f"{path}.select", problems)
        config = build_config(raw, path, Config, problems)
        if config is not None:
            steps.append(Step(config, select, name))
    if problems:
        raise ConfigError(f"invalid recipe {source}", problems)
    return Recipe(
        name=data.get("name", source),
        steps=tuple(steps),
        description=data.get("description", ""),
        seed=data.get("seed", 0),
    )


def _builtin_dir() -> Any:
    return resources.files("torchslim.recipes") / "builtin"


def builtin_recipes() -> dict[str, Recipe]:
    """Name -> Recipe of every built-in recipe (the YAML files in ``torchslim/recipes/builtin``)."""
    out = {}
    for entry in sorted(_builtin_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = _parse_yaml(entry.read_text(encoding="utf-8"), entry.name)
    return out


def _parse_yaml(text: str, source: str) -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # Includes !!python/object tags: safe_load refuses to construct them, nothing is executed.
        raise ConfigError(f"recipe {source} is not valid safe YAML", [str(e).replace("\n", " ")]) from None
    except RecursionError:
        raise ConfigError(f"recipe {source} is nested too deeply to be read") from None
    _check_size(data, source)
    return recipe_from_dict(data, source)


def _check_size(data: Any, source: str) -> None:
    """Refuse a document that holds more than MAX_RECIPE_VALUES values counted as expanded.

    YAML aliases make a small file stand for an exponentially large (or cyclic) structure ("billion
    laughs"); validating or printing it would never finish. The walk stops at the limit.
    """
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_RECIPE_VALUES:
            raise UnsafeInputError(
                f"recipe {source} expands to more than {MAX_RECIPE_VALUES} values (YAML aliases?); refusing it"
            )
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def load_recipe(source: str | Path) -> Recipe:
    """Load a recipe from a YAML file path or a built-in name.

    Raises:
        UsageError: neither an existing file nor a built-in name (the message lists the built-ins).
        ConfigError: invalid YAML or invalid content (every problem with its field path).
        UnsafeInputError: the file is larger than 1 MB or not UTF-8 text.
    """
    path = Path(source)
    if path.is_file():
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise UnsafeInputError(f"recipe {path} is larger than {MAX_RECIPE_BYTES} bytes; refusing to read it")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UnsafeInputError(f"recipe {path} is not UTF-8 text") from None
        return _parse_yaml(text, str(path))
    name = str(source)
    builtins = builtin_recipes()
    if name in builtins:
        return builtins[name]
    raise UsageError(f"no recipe file or built-in recipe named {name!r}; built-in recipes: {', '.join(builtins)}")


@dataclass
class StepReport:
    """What one step did: its report after the step, the events it recorded, and its duration."""

    name: str
    kind: str
    report: Report | None
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "report": None if self.report is None else self.report.to_dict(),
            "events": list(self.events),
            "seconds": self.seconds,
        }


@dataclass
class RunReport:
    """The baseline and the state after every step of a recipe run."""

    recipe: Recipe
    baseline: Report | None
    steps: list[StepReport] = field(default_factory=list)

    @property
    def final(self) -> Report | None:
        return self.steps[-1].report if self.steps else self.baseline

    def rows(self) -> list[tuple[str, Report]]:
        rows = [("baseline", self.baseline)] if self.baseline is not None else []
        rows += [(f"{i + 1}. {s.name}", s.report) for i, s in enumerate(self.steps) if s.report is not None]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "diff": None if self.baseline is None or self.final is None else self.final.diff(self.baseline),
        }

    def to_markdown(self) -> str:
        return to_markdown(self.rows())

    def print(self, console: Any = None) -> None:
        print_table(self.rows(), title=f"recipe {self.recipe.name}", console=console)
        for s in self.steps:
            for e in s.events:
                (console.print if console else print)(f"  [{s.name}] {e}")


def run_recipe(
    model: nn.Module,
    recipe: Recipe,
    ctx: Context | None = None,
    *,
    measure_steps: bool = True,
    latency_runs: int = 30,
    baseline: Report | None = None,
    progress: bool = True,
    distill_eval: EvalFn | None = None,
    on_step_end: Callable[[int, nn.Module], None] | None = None,
) -> tuple[nn.Module, RunReport]:
    """Apply every step of ``recipe`` in order, measuring the model after each.

    Progress goes to stderr through :mod:`torchslim.core.progress` (a bar on a terminal, plain lines
    elsewhere): a line when the baseline measurement and each step start and end, the end lines with
    the duration, e.g. ``torchslim: recipe int8-static: step 1/1 int8-static done in 0.4 s
    (+0.2 s measuring)``; the techniques' own progress (calibration, GPTQ layers) is nested in it.

    Args:
        model: the model (changed in place where the techniques allow).
        recipe: the recipe.
        ctx: shared inputs for the steps and the measurements. Without ``ctx.teacher``, a recipe with a
            distillation step uses a frozen copy of the input model as the teacher.
        measure_steps: measure the baseline and after every step (False: only run).
        latency_runs: timed runs per measurement.
        baseline: a baseline already measured (skips measuring it again).
        progress: report progress (False: silent, including the steps' own progress).
        distill_eval: ``model -> {metric: value}``, the distill steps' ``eval_fn`` (as
            ``Context.distill_eval``): called at each evaluation of their training (``eval_every``; by
            default the end of every epoch). Its first metric drives early stopping and the best weights, so
            a hook that only watches returns an increasing first metric (the evaluation count) to keep the
            last weights; it must not draw from the global random state (fork it), or the training changes.
        on_step_end: ``on_step_end(i, model)`` after step ``i`` (0-based), before its measurement (its time
            counts in the step's); it may raise to stop the run (tune prunes a trial so).

    The hooks change nothing else: a hook that changes neither the model nor the global random state (and a
    ``distill_eval`` whose first metric increases) gives the model a run without hooks gives.

    Returns:
        ``(model, run_report)``.

    Example:
        >>> recipe = recipe_from_dict({"name": "half", "steps": [{"kind": "cast-dtype", "dtype": "bfloat16"}]})
        >>> seen = []
        >>> model, run = run_recipe(nn.Linear(2, 2), recipe, measure_steps=False, progress=False,
        ...                         on_step_end=lambda i, m: seen.append((i, m.weight.dtype)))
        >>> seen
        [(0, torch.bfloat16)]
    """
    from torchslim.api import compress_

    ctx = ctx if ctx is not None else Context()
    if ctx.teacher is None and any(getattr(s.config, "needs_teacher", False) for s in recipe.steps):
        # A distillation step learns from the model as it came in (before pruning/quantization); a new
        # Context (sharing ``events``) so the caller's is not changed.
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        ctx = dataclasses.replace(ctx, teacher=teacher)
    if distill_eval is not None:
        ctx = dataclasses.replace(ctx, distill_eval=distill_eval)
    n = len(recipe.steps)
    with progress_task(n, f"recipe {recipe.name}", unit="steps", enabled=progress) as bar:
        if measure_steps and baseline is None:
            bar.update(status="baseline")
            bar.note(f"recipe {recipe.name}: measuring the baseline")
            start = time.perf_counter()
            baseline = measure(model, ctx, latency_runs=latency_runs)
            bar.note(f"recipe {recipe.name}: baseline measured in {format_duration(time.perf_counter() - start)}")
        run = RunReport(recipe, baseline)
        for i, step in enumerate(recipe.steps):
            title = f"recipe {recipe.name}: step {i + 1}/{n} {_step_title(step)}"
            bar.update(status=f"step {i + 1}/{n} {step.label}")
            bar.note(f"{title} started")
            torch.manual_seed(recipe.seed + ctx.seed + i)
            n_events = len(ctx.events)
            start = time.perf_counter()
            model = compress_(model, step.config, select=step.select, ctx=ctx)
            if on_step_end is not None:
                on_step_end(i, model)
            seconds = time.perf_counter() - start
            report = measure(model, ctx, latency_runs=latency_runs) if measure_steps else None
            measured = f" (+{format_duration(time.perf_counter() - start - seconds)} measuring)" if report else ""
            bar.note(f"{title} done in {format_duration(seconds)}{measured}")
            run.steps.append(StepReport(step.label, step.config.kind, report, ctx.events[n_events:], seconds))
            bar.advance()
    return model, run


def _step_title(step: Step) -> str:
    """``label`` or ``label (kind)`` when the step is named."""
    return step.label if step.label == step.config.kind else f"{step.label} ({step.config.kind})"
