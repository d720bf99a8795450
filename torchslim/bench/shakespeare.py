"""``torchslim bench shakespeare-gpt --data FILE``: int4 weight quantization methods on a char-level GPT.

The model is the ``shakespeare-gpt`` workload's :class:`~torchslim.workloads.shakespeare.CharGPT`
(trained and cached on first use). Every Linear (attention, MLP and the output head; all have
``in_features`` a multiple of 128) is quantized; the embeddings stay fp32. Rows:

- ``fp32``;
- ``torchslim-int4-{rtn,gptq,awq,hqq}-g128`` and the same four at ``-g32``:
  ``Int4WeightOnly(group_size, method)``; GPTQ and AWQ calibrate on 8 batches of 8 random *training*
  windows (the held-out tail is only scored); ``torchslim-int4-gptq-g128`` is read from the built-in
  ``int4-g128`` recipe (``TABLE.recipes``), the same config;
- ``torchslim-int4-w4a8-gptq-g128`` (right after ``torchslim-int4-gptq-g128``, its W4A16 twin): the built-in
  ``int4-w4a8-g128`` recipe, ``Int4WeightOnly(group_size=128, method="gptq", activations="int8")``: the same
  GPTQ calibration, the weights in torchslim's W4A8 kernel layout
  (:class:`~torchslim.quantization.int4.w4a8.Int4W4A8Linear`) and every Linear's input quantized to int8
  per token (LLM.int8()'s per-token scales, Dettmers et al., arXiv:2208.07339). Its ``val_ppl`` against
  ``torchslim-int4-gptq-g128``'s is what int8 activations cost; the row is left out with a note where
  the W4A8 kernel cannot be built (:func:`torchslim.kernels.load` falls back to the torch reference, whose
  sums are the same but whose latency is not the kernel's);
- ``torchslim-int4-mixed``: ``MixedPrecision(budget_ratio=0.2, method="gptq", group_size=128)``, int4 /
  int8 / bf16 per layer by output SQNR under 20 % of the Linear weights' fp32 bytes (the choice per layer
  is in the notes).

Quality is ``val_ppl`` (lower is better) and ``val_loss`` on the whole held-out tail; ``ppl_vs_fp32`` is
the row's perplexity over fp32's. Latency is one batch of 8 held-out windows (the model is small, so
the int4 rows are not expected to be faster here: this benchmark is about quality and size).
"""

from __future__ import annotations

import copy
from typing import Any

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, RowBuilder, recipe_config
from torchslim.core.context import Context
from torchslim.measure import artifact_bytes

METHODS = ("rtn", "gptq", "awq", "hqq")
GROUPS = (128, 32)
MIXED_BUDGET = 0.2
W4A8_ROW = "torchslim-int4-w4a8-gptq-g128"  # GPTQ g128 with int8 activations, next to its W4A16 twin
_METHOD_ROWS = tuple(f"torchslim-int4-{m}-g{g}" for g in GROUPS for m in METHODS)
_AFTER = _METHOD_ROWS.index("torchslim-int4-gptq-g128") + 1
INT4_ROWS = (*_METHOD_ROWS[:_AFTER], W4A8_ROW, *_METHOD_ROWS[_AFTER:], "torchslim-int4-mixed")

TABLE = BenchTable(
    name="shakespeare-gpt",
    workload="shakespeare-gpt",
    rows=("fp32", *INT4_ROWS),
    metrics=("val_ppl", "val_loss"),
    columns=("build_s", "ppl_vs_fp32"),
    recipes={"torchslim-int4-gptq-g128": "int4-g128", W4A8_ROW: "int4-w4a8-g128"},
    optional=INT4_ROWS,  # left out when the int4 core is not importable (W4A8: when its kernel is not built)
    rounds=(3, 10),
    warmup=(1, 2),
)


def _int4_configs() -> dict[str, Any]:
    """Row name -> config, in table order; empty when the int4 core is not importable (the fp32 row still runs)."""
    try:
        from torchslim.quantization import Int4WeightOnly, MixedPrecision
    except ImportError:
        return {}
    configs: dict[str, Any] = {
        f"torchslim-int4-{m}-g{g}": Int4WeightOnly(group_size=g, method=m) for g in GROUPS for m in METHODS
    }
    configs.update({name: recipe_config(recipe) for name, recipe in TABLE.recipes.items()})  # the same, from its file
    configs["torchslim-int4-mixed"] = MixedPrecision(budget_ratio=MIXED_BUDGET, method="gptq", group_size=128)
    return {name: configs[name] for name in INT4_ROWS}


def _w4a8_missing() -> str:
    """Why the W4A8 row is left out here: "" when the W4A8 kernel is built (builds it at the first call)."""
    from torchslim import kernels

    if kernels.load() == "torch-reference":
        return "torchslim.kernels runs its torch reference here (the C++ build failed or TORCHSLIM_KERNELS=reference)"
    return ""


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark on the tiny-Shakespeare file ``data`` (default: ``$TORCHSLIM_DATA/tinyshakespeare/input.txt``).

    ``quick`` only shortens the latency timing; every row is still scored on the whole held-out tail.
    """
    from torchslim.workloads import get_workload

    return run_on(get_workload(TABLE.workload, data=data), quick=quick)


def run_on(wl: Any, quick: bool = False) -> BenchResult:
    """The benchmark on a given :class:`~torchslim.workloads.shakespeare.ShakespeareWorkload` (tests pass a tiny one)."""
    fp32 = wl.model()
    x = wl.example_inputs()
    calibration = wl.calibration(8)
    rows = RowBuilder()
    rows.add("fp32", lambda: (fp32, artifact_bytes(fp32)))
    configs = _int4_configs()
    if not configs:
        rows.notes.append("int4 rows left out: torchslim.quantization has no Int4WeightOnly / MixedPrecision here")

    def ours(name: str, config: Any) -> tuple[Any, int]:
        ctx = Context(calibration=calibration)
        model = compress_(copy.deepcopy(fp32), config, ctx=ctx).eval()
        rows.notes.extend(f"{name}: {e}" for e in ctx.events)
        return model, artifact_bytes(model)

    w4a8_missing = _w4a8_missing() if W4A8_ROW in configs else ""  # the kernel builds here, outside build_s
    for name, config in configs.items():
        if name == W4A8_ROW and w4a8_missing:
            rows.add(name, lambda: None, missing=w4a8_missing)  # left out with a note
            continue
        rows.add(name, lambda name=name, config=config: ours(name, config))
    variants = rows.variants(x, quality=lambda model: lambda: wl.evaluate(model, "val"))
    result = TABLE.run(variants, quick)
    base = result.rows[0]["quality"]["val_ppl"]  # fp32, the first row
    for row in result.rows:
        row["ppl_vs_fp32"] = round(row["quality"]["val_ppl"] / base, 4)
    n_tail = wl.val_windows()[:, 1:].numel()
    result.notes.append(
        f"val_ppl on the whole held-out tail ({n_tail} characters, windows of {wl.arch.block_size}); latency of one "
        f"batch of {x[0].shape[0]} windows; GPTQ/AWQ calibrated on {len(calibration)} batches of training windows"
    )
    result.notes.extend(rows.notes)
    return result
