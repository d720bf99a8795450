"""``torchslim bench digits-tune``: the recipe ``torchslim tune`` finds against every built-in recipe on digits.

The budget: at most 1 accuracy point lost on the validation split (``--max-drop 0.01``), the split the
search sees. The search (objective ``size``, 40 trials, 20 with ``--quick``) starts from the built-in
recipes its space expresses (``kws-tiny``, ``default``, ...) and refines around the best; it runs in a temporary folder;
then fp32, every built-in recipe (``torchslim-<name>``) and the tuned recipe (``torchslim-tuned``) are
built from the same teacher and timed interleaved in one process (one thread). Each row carries
``val_drop`` and ``within_budget``; the notes say whether the tuned recipe is smaller and/or faster
than every built-in recipe within the same budget. ``int8-dynamic-compiled`` is left out: it compiles
with ``torch.compile`` (minutes), a path meant for transformers.
"""

from __future__ import annotations

import copy
import tempfile

import torch

from torchslim.bench.harness import BenchResult, Variant, run_benchmark
from torchslim.measure import artifact_bytes
from torchslim.recipes import builtin_recipes, load_recipe, run_recipe

MAX_DROP = 0.01
SKIP = ("int8-dynamic-compiled",)


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the comparison (``data`` is unused: scikit-learn ships the digits)."""
    from torchslim.tuning import tune
    from torchslim.workloads import get_workload

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trials = 20 if quick else 40
        wl = get_workload("digits")
        teacher = wl.model()
        ctx = wl.context()
        x = ctx.example_inputs
        with tempfile.TemporaryDirectory() as out:
            result = tune(wl, max_drop=MAX_DROP, objective="size", trials=trials, out=out, builtins=(), progress=False)
            tuned = load_recipe(result.paths["best"]) if result.chosen is not None else None
        base_val = wl.evaluate(teacher, "val")["accuracy"]
        recipes = {f"torchslim-{n}": r for n, r in builtin_recipes().items() if n not in SKIP}
        if tuned is not None:
            recipes["torchslim-tuned"] = tuned
        variants = [_variant("fp32", teacher, wl, x, base_val)]
        for name, recipe in recipes.items():
            # A fresh context per recipe: its training data shuffles like in the tuning trial.
            model, _ = run_recipe(copy.deepcopy(teacher), recipe, wl.context(), measure_steps=False)
            variants.append(_variant(name, model.eval(), wl, x, base_val))
        res = run_benchmark("digits-tune", variants, rounds=10 if quick else 40, warmup=3 if quick else 10)
    finally:
        torch.set_num_threads(old_threads)
    res.notes.append(
        f"budget: validation accuracy drop <= {MAX_DROP} (1 point); tune: objective size, {trials} trials, seed 0; "
        f"latency per batch of {x[0].shape[0]} on 1 thread; accuracy columns on the test split"
    )
    if tuned is None:
        res.notes.append("tune found no recipe within the budget")
        return res
    res.notes.append(f"tuned recipe: {result.chosen.get('description', '')}")
    rows = {r["variant"]: r for r in res.rows}
    ok = [r for n, r in rows.items() if n not in ("fp32", "torchslim-tuned") and r["within_budget"]]
    t = rows["torchslim-tuned"]
    smaller = all(t["size_mb"] < r["size_mb"] for r in ok)
    faster = all(t["latency_ms"] < r["latency_ms"] for r in ok)
    res.notes.append(
        f"tuned within budget: {t['within_budget']}; smaller than every built-in within budget ({len(ok)}): {smaller}; "
        f"faster than every one: {faster}"
    )
    return res


def _variant(name: str, model: torch.nn.Module, wl, x: tuple, base_val: float) -> Variant:
    drop = base_val - wl.evaluate(model, "val")["accuracy"]
    return Variant(
        name,
        model,
        x,
        size_bytes=artifact_bytes(model),
        quality=lambda: wl.evaluate(model, "test"),
        extra={"val_drop": round(drop, 4), "within_budget": bool(drop <= MAX_DROP + 1e-9)},
    )
