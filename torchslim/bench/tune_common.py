"""What the ``*-tune`` benchmarks share: tune in a temporary folder, then time the tuned recipe beside the built-ins.

``tune`` sees only the validation split; the benchmark rebuilds fp32, the built-in recipes
(``torchslim-<name>``) and the tuned recipe (``torchslim-tuned``) from the same baseline, times them
interleaved in one process and scores them on the test split. Each row carries ``val_drop`` and
``within_budget`` (judged on the validation split as the search judges a trial); the notes say whether
the tuned recipe is within budget and smaller and/or faster than every built-in recipe within it.

Example:
    >>> res = BenchResult("x", [{"variant": "torchslim-a", "size_mb": 2.0, "latency_ms": 1.0, "within_budget": True},
    ...                         {"variant": "torchslim-tuned", "size_mb": 1.0, "latency_ms": 2.0, "within_budget": True}])
    >>> verdict(res)
    'tuned within budget: True; smaller than every built-in within budget (1): True; faster than every one: False'
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from torchslim.bench.harness import BenchResult, BenchTable, Variant, run_benchmark, threads
from torchslim.measure import artifact_bytes
from torchslim.recipes import Recipe, load_recipe, run_recipe
from torchslim.tuning.budget import Budget

__all__ = [
    "compare_tuned",
    "confirmation_note",
    "tune_and_compare",
    "tune_flags",
    "tune_in_tempdir",
    "tune_table",
    "verdict",
]

# ``tune`` keyword -> its ``torchslim tune`` flag: the arguments a tune bench may pass (tune_flags checks).
_FLAGS = {
    "max_drop": "--max-drop",
    "objective": "--objective",
    "trials": "--trials",
    "margin": "--margin",
    "threads": "--threads",
    "latency_runs": "--latency-runs",
    "seed": "--seed",
    "confirm": "--confirm",
    "builtins": "--builtins",
}


def tune_flags(**kwargs: Any) -> list[str]:
    """The ``torchslim tune`` flags for the keyword arguments :func:`tune_in_tempdir` passes to ``tune``.

    Raises ValueError for a keyword the command line cannot express (its row would not be reproducible).

    Example:
        >>> tune_flags(max_drop=0.01, trials=40, builtins=())
        ['--max-drop', '0.01', '--trials', '40', '--builtins', 'none']
    """
    unknown = sorted(set(kwargs) - set(_FLAGS))
    if unknown:
        raise ValueError(f"tune arguments with no `torchslim tune` flag: {', '.join(unknown)}")
    out: list[str] = []
    for key, value in kwargs.items():
        if key == "builtins":
            value = ",".join(value) or "none"
        out += [_FLAGS[key], f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def tune_in_tempdir(wl: Any, **kwargs: Any) -> tuple[Any, Recipe | None]:
    """``tune(wl, TuneOptions(out=<temporary folder>, builtins=(), progress=False, **kwargs))``: the result
    and the tuned recipe (None when no trial met the budget); the folder is removed."""
    from torchslim.tuning import TuneOptions, tune

    with tempfile.TemporaryDirectory() as out:
        result = tune(wl, TuneOptions(out=out, progress=False, **{"builtins": (), **kwargs}))
        tuned = load_recipe(result.paths["best"]) if result.chosen is not None else None
    return result, tuned


def _variant(name: str, model: torch.nn.Module, wl: Any, x: tuple, budget: Budget) -> Variant:
    j = budget.judge(model)
    se = {} if j.drop_se is None else {"val_drop_se": round(j.drop_se, 4)}
    return Variant(
        name,
        model,
        x,
        size_bytes=artifact_bytes(model),
        quality=lambda: wl.evaluate(model, "test"),
        extra={"val_drop": round(j.drop, 4), **se, "within_budget": j.feasible},
    )


def compare_tuned(
    name: str,
    wl: Any,
    base: torch.nn.Module,
    recipes: Mapping[str, Recipe],
    *,
    max_drop: float,
    margin: float,
    rounds: int,
    warmup: int,
) -> BenchResult:
    """Rows ``fp32`` and ``torchslim-<key>`` for each of ``recipes``, built from copies of ``base``, timed interleaved.

    Each recipe runs with a fresh ``wl.context()`` (its training data shuffles as in the tuning trial); each row
    is judged against the budget as ``tune`` judges a trial (``max_drop`` and ``margin``, see
    :mod:`torchslim.tuning.budget`).
    """
    x = wl.example_inputs()
    budget = Budget(wl, base, max_drop=max_drop, margin=margin)
    variants = [_variant("fp32", base, wl, x, budget)]
    for key, recipe in recipes.items():
        model, _ = run_recipe(copy.deepcopy(base), recipe, wl.context(), measure_steps=False)
        variants.append(_variant(f"torchslim-{key}", model.eval(), wl, x, budget))
    return run_benchmark(name, variants, rounds=rounds, warmup=warmup)


def tune_table(name: str, workload: str, builtins: Sequence[str], metrics: Sequence[str], **timing: Any) -> BenchTable:
    """The table of a tune benchmark: ``fp32``, ``torchslim-<name>`` for each of ``builtins`` (each rebuilt by
    its recipe) and ``torchslim-tuned`` (absent when no trial met the budget); ``timing``: rounds, warmup.

    Example:
        >>> tune_table("t", "digits", ["bf16"], ["accuracy"]).rows
        ('fp32', 'torchslim-bf16', 'torchslim-tuned')
    """
    return BenchTable(
        name=name,
        workload=workload,
        rows=("fp32", *(f"torchslim-{b}" for b in builtins), "torchslim-tuned"),
        metrics=tuple(metrics),
        columns=("val_drop", "val_drop_se", "within_budget"),
        recipes={f"torchslim-{b}": b for b in builtins},
        optional=("torchslim-tuned",),
        **timing,
    )


def tune_and_compare(
    table: BenchTable,
    wl: Any,
    quick: bool,
    *,
    n_threads: int,
    tune_kwargs: Mapping[str, Any],
    budget_note: str,
) -> BenchResult:
    """The tune benches' flow: ``tune`` in a temporary folder with ``tune_kwargs`` (``max_drop`` and ``margin``
    among them; the row ``torchslim-tuned``'s reproduce command passes the same as :func:`tune_flags`), then
    :func:`compare_tuned` on the table's built-in recipes plus the tuned one, on ``n_threads`` threads;
    notes: ``budget_note``, the tuned recipe, its confirmation and the :func:`verdict`."""
    from torchslim.recipes import builtin_recipes

    max_drop, margin = tune_kwargs["max_drop"], tune_kwargs["margin"]
    with threads(n_threads):
        result, tuned = tune_in_tempdir(wl, **tune_kwargs)
        builtins = builtin_recipes()
        recipes = {name.removeprefix("torchslim-"): builtins[r] for name, r in table.recipes.items()}
        if tuned is not None:
            recipes["tuned"] = tuned
        res = compare_tuned(
            table.name,
            wl,
            wl.model(),
            recipes,
            max_drop=max_drop,
            margin=margin,
            rounds=table.rounds_for(quick),
            warmup=table.warmup_for(quick),
        )
    res.notes.append(budget_note)
    if tuned is None:
        res.notes.append("tune found no recipe within the budget")
        return res
    res.notes.append(f"tuned recipe: {result.chosen.get('description', '')}; {confirmation_note(result.chosen)}")
    res.notes.append(verdict(res))
    return res


def verdict(res: BenchResult) -> str:
    """Whether ``torchslim-tuned`` is within budget, smaller / faster than every built-in row within budget."""
    rows = {r["variant"]: r for r in res.rows}
    ok = [r for n, r in rows.items() if n not in ("fp32", "torchslim-tuned") and r["within_budget"]]
    t = rows["torchslim-tuned"]
    smaller = all(t["size_mb"] < r["size_mb"] for r in ok)
    faster = all(t["latency_ms"] < r["latency_ms"] for r in ok)
    return (
        f"tuned within budget: {t['within_budget']}; smaller than every built-in within budget ({len(ok)}): {smaller}; "
        f"faster than every one: {faster}"
    )


def confirmation_note(chosen: dict[str, Any]) -> str:
    """How ``tune`` confirmed its chosen trial (see ``tune``'s ``confirm``).

    Example:
        >>> confirmation_note({"how": "no training step"})
        'no training step (the same model with any seed)'
    """
    if "confirm_drop" in chosen:
        return (
            f"confirmed with seed {chosen['confirm_seed']}: val drop {chosen['drop']:.4f} and "
            f"{chosen['confirm_drop']:.4f}, mean {chosen['mean_drop']:.4f}"
        )
    if chosen.get("how") == "no training step":
        return "no training step (the same model with any seed)"
    return "not confirmed"
