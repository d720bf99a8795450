"""``torchslim bench minilm-tune --data DIR``: the recipe ``torchslim tune`` finds against the built-ins on MiniLM.

The budget: at most 1 Spearman point (× 100) lost on the STS-B dev split (``--max-drop 1.0``), the
split the search sees; the test split only fills the table. The search (objective ``size``, 20 trials,
8 with ``--quick``) runs in the workload's own space (:meth:`MiniLMWorkload.tune_space_overrides`:
post-training techniques only), starting from the built-in recipes it expresses
(``int8-dynamic``, ``int8-weight-only``, ``int4-g128``, ``bf16``, ``wanda-50``). Then fp32, those
built-ins and the tuned recipe are rebuilt, timed interleaved (batch 32 × 128 tokens) and scored on
the test split (see :mod:`torchslim.bench.tune_common`). Built-ins that train (fine-tuning,
distillation, QAT: a training run per trial) and ``int8-dynamic-compiled`` (the same size as ``int8-dynamic``,
plus a ``torch.compile`` per build) are left out.
"""

from __future__ import annotations

from typing import Any

from torchslim.bench.harness import BenchResult
from torchslim.bench.tune_common import tune_and_compare, tune_table

MAX_DROP = 1.0
TRIALS = 20  # 8 with --quick
MARGIN = 1.0  # tune's default; STS-B Spearman has no per-example scores, so it does not apply
BUILTINS = ("bf16", "int8-dynamic", "int8-weight-only", "int4-g128", "wanda-50")
THREADS = 2
TABLE = tune_table("minilm-tune", "minilm-stsb", BUILTINS, ["stsb_spearman", "cos_min"], rounds=(3, 10), warmup=(1, 2))


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
    """Run the comparison on the STS benchmark folder ``data`` (default: ``$TORCHSLIM_DATA/stsbenchmark``)."""
    from torchslim.workloads import get_workload

    settings = tune_settings(quick)
    return tune_and_compare(
        TABLE,
        get_workload(TABLE.workload, data=data),
        quick,
        n_threads=THREADS,
        tune_kwargs=settings,
        budget_note=f"budget: STS-B dev Spearman x100 drop <= {MAX_DROP:g}; tune: objective size, "
        f"{settings['trials']} trials, seed 0, post-training space; latency per batch of 32 x 128 tokens on "
        f"{THREADS} threads; quality columns on the STS-B test split",
    )
