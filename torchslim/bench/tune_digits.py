"""``torchslim bench digits-tune``: the recipe ``torchslim tune`` finds against every built-in recipe on digits.

The budget: at most 1 accuracy point lost on the validation split (``--max-drop 0.01``), the split the
search sees, counting one standard error of the per-image drop (``--margin 1``, see
:mod:`torchslim.tuning.budget`): 360 validation images cannot tell a 1-point drop from luck, and without
the margin the search picked a model that lost 0.8 points on validation and 2.8 on test. The search
(objective ``size``, 40 trials, 20 with ``--quick``) starts from the built-in recipes its space expresses (``kws-tiny``, ``default``, ...), refines around the best and confirms the
winner with another training seed (``tune``'s ``confirm``); it runs in a temporary folder; then fp32,
every built-in recipe (``torchslim-<name>``) and the tuned recipe (``torchslim-tuned``) are built from
the same teacher and timed interleaved in one process (one thread), see :mod:`torchslim.bench.tune_common`.
Each row carries ``val_drop`` and ``within_budget``; the notes say whether the tuned recipe is smaller
and/or faster than every built-in recipe within the same budget. ``int8-dynamic-compiled`` is left out:
it compiles with ``torch.compile``, a path meant for transformers.
"""

from __future__ import annotations

from typing import Any

from torchslim.bench.harness import BenchResult
from torchslim.bench.tune_common import tune_and_compare, tune_table
from torchslim.recipes import builtin_recipes

MAX_DROP = 0.01
TRIALS = 40  # 20 with --quick
MARGIN = 1.0  # standard errors of the per-image drop (see torchslim.tuning.budget)
SKIP = ("int8-dynamic-compiled", "minilm-edge")
TABLE = tune_table(
    "digits-tune",
    "digits",
    [name for name in builtin_recipes() if name not in SKIP],
    ["accuracy"],
    rounds=(10, 40),
    warmup=(3, 10),
)


def tune_settings(quick: bool = False) -> dict[str, Any]:
    """The keyword arguments this benchmark gives ``tune`` (the ``torchslim-tuned`` row's command passes them).

    Example:
        >>> tune_settings()["trials"], tune_settings(quick=True)["trials"]
        (40, 20)
    """
    trials = TRIALS // 2 if quick else TRIALS
    return {"max_drop": MAX_DROP, "margin": MARGIN, "objective": "size", "trials": trials, "builtins": ()}


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the comparison (``data`` is unused: scikit-learn ships the digits)."""
    from torchslim.workloads import get_workload

    settings = tune_settings(quick)
    wl = get_workload(TABLE.workload)
    return tune_and_compare(
        TABLE,
        wl,
        quick,
        n_threads=1,
        tune_kwargs=settings,
        budget_note=f"budget: validation accuracy drop + {MARGIN:g} standard error <= {MAX_DROP} (1 point); "
        f"tune: objective size, {settings['trials']} trials, seed 0; "
        f"latency per batch of {wl.example_inputs()[0].shape[0]} on 1 thread; accuracy columns on the test split",
    )
