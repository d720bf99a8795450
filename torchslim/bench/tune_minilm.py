"""``torchslim bench minilm-tune --data DIR``: the recipe ``torchslim tune`` finds against the built-ins on MiniLM.

The budget: at most 1 Spearman point (× 100) lost on the STS-B dev split (``--max-drop 1.0``), the
split the search sees; the test split only fills the table. The search (objective ``size``, 20 trials,
8 with ``--quick``) runs in the workload's own space (:meth:`MiniLMWorkload.tune_space_overrides`:
post-training techniques, about a minute a trial), starting from the built-in recipes it expresses
(``int8-dynamic``, ``int8-weight-only``, ``int4-g128``, ``bf16``, ``wanda-50``). Then fp32, those
built-ins and the tuned recipe are rebuilt, timed interleaved (batch 32 × 128 tokens) and scored on
the test split (see :mod:`torchslim.bench.tune_common`). Built-ins that train (fine-tuning,
distillation, QAT: hours on CPU) and ``int8-dynamic-compiled`` (the same size as ``int8-dynamic``,
minutes of ``torch.compile``) are left out.
"""

from __future__ import annotations

from typing import Any

from torchslim.bench.harness import BenchResult
from torchslim.bench.tune_common import tune_and_compare
from torchslim.recipes import builtin_recipes

WORKLOAD = "minilm-stsb"
MAX_DROP = 1.0
TRIALS = 20  # 8 with --quick
MARGIN = 1.0  # tune's default; STS-B Spearman has no per-example scores, so it does not apply
BUILTINS = ("bf16", "int8-dynamic", "int8-weight-only", "int4-g128", "wanda-50")
THREADS = 2
# Rows built by a built-in recipe: variant -> recipe name (reproduce: `torchslim compress --recipe NAME`).
RECIPES = {f"torchslim-{name}": name for name in BUILTINS}


def tune_settings(quick: bool = False) -> dict[str, Any]:
    """The keyword arguments this benchmark gives ``tune`` (the ``torchslim-tuned`` row's command passes them).

    Example:
        >>> tune_settings()["trials"], tune_settings()["threads"]
        (20, 2)
    """
    return {
        "max_drop": MAX_DROP,
        "margin": MARGIN,
        "objective": "size",
        "trials": 8 if quick else TRIALS,
        "threads": THREADS,
        "latency_runs": 3 if quick else 5,
        "builtins": (),
    }


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the comparison on the STS benchmark folder ``data`` (default ``../shared/data/stsbenchmark``)."""
    from torchslim.workloads.minilm import MiniLMWorkload

    settings = tune_settings(quick)
    trials = settings["trials"]
    return tune_and_compare(
        "minilm-tune",
        MiniLMWorkload(data),
        {n: builtin_recipes()[n] for n in BUILTINS},
        threads=THREADS,
        tune_kwargs=settings,
        rounds=3 if quick else 10,
        warmup=1 if quick else 2,
        budget_note=f"budget: STS-B dev Spearman x100 drop <= {MAX_DROP:g}; tune: objective size, {trials} trials, "
        f"seed 0, post-training space; latency per batch of 32 x 128 tokens on {THREADS} threads; quality columns "
        "on the STS-B test split",
    )
