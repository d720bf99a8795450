"""``torchslim bench distill-fsdp``: distilling a LLaMA-shaped student with DDP and with FSDP2, per-rank memory.

A seeded random LLaMA student (``LlamaForCausalLM``, its decoder layers a ``ModuleList``: FSDP's units)
learns a smaller seeded random teacher's next-token distribution (the ``kd`` loss on logits) from seeded
random token ids, for a few AdamW steps at one global batch. Rows:

* ``fp32``: one process, no data parallelism (the reference loss and memory);
* ``torchslim-distill-ddp``: ``torchrun`` with 2 ranks, ``train_distill(parallel="ddp")``;
* ``torchslim-distill-fsdp``: the same with ``parallel="fsdp"``.

Every run is a process (or process group) of its own and reports its peak resident memory
(``VmHWM``): ``peak_rss_mb`` is the largest over the ranks, ``train_mb`` the largest growth over the
ranks from just before training (the models loaded) to the peak. ``latency_ms`` is the wall time of one
optimizer step (the run's seconds over its steps); ``final_loss`` the last step's loss, which the three
runs share up to float summation order (the same global batches).

Example:
    >>> TABLE.rows
    ('fp32', 'torchslim-distill-ddp', 'torchslim-distill-fsdp')
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from torchslim.bench.harness import BenchResult, BenchTable
from torchslim.workloads.llama import LlamaSpec

__all__ = ["TABLE", "bench"]

TABLE = BenchTable(
    name="distill-fsdp",
    workload="llama-decode",
    rows=("fp32", "torchslim-distill-ddp", "torchslim-distill-fsdp"),
    metrics=("final_loss",),
    columns=("params", "ranks", "peak_rss_mb", "train_mb"),
)
RANKS = 2
FP32_FROM_BENCH = True  # the fp32 row is this benchmark's one-process run (report.row_command)
_SHAPES = {  # student, teacher
    False: (
        LlamaSpec(hidden=1024, intermediate=2816, layers=8, heads=16, vocab=4096),
        LlamaSpec(hidden=256, intermediate=704, layers=2, heads=4, vocab=4096),
    ),
    True: (
        LlamaSpec(hidden=128, intermediate=352, layers=4, heads=4, vocab=512),
        LlamaSpec(hidden=64, intermediate=176, layers=1, heads=2, vocab=512),
    ),
}
_BATCH = {False: (8, 128, 6), True: (4, 16, 3)}  # sequences, tokens, steps


def child_main() -> None:
    """One run (a process, or each rank under torchrun; ``argv``: OUT PARALLEL quick|full): distil, then rank
    0 writes the figures as JSON to OUT."""
    import torch.distributed as dist

    from torchslim.distillation import DistillConfig, train_distill
    from torchslim.distillation.distributed import init_from_env
    from torchslim.measure.heap import peak_resident_bytes, resident_bytes
    from torchslim.workloads.llama import build_llama

    out, parallel, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "quick"
    info = init_from_env()
    student_spec, teacher_spec = _SHAPES[quick]
    rows, tokens, steps = _BATCH[quick]
    student, teacher = build_llama(student_spec, seed=0).float(), build_llama(teacher_spec, seed=1).float()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, student_spec.vocab, (steps * rows, tokens), generator=gen)
    batches = [(ids[i * rows : (i + 1) * rows],) for i in range(steps)]
    config = DistillConfig(epochs=1, batch_size=rows, alpha=1.0, lr=1e-4, warmup=0.0)
    before = resident_bytes() / 2**20
    mode = "auto" if parallel == "none" else parallel
    run = train_distill(student, teacher, lambda: batches, config, progress=False, parallel=mode)
    mine = {"before_mb": before, "peak_mb": peak_resident_bytes() / 2**20}
    ranks = [mine]
    if info.distributed:
        ranks = [None] * info.world_size
        dist.all_gather_object(ranks, mine)
    if info.is_main:
        record = {
            "parallel": run.parallel,
            "ranks": info.world_size,
            "params": sum(p.numel() for p in run.student.parameters()),
            "seconds": run.seconds,
            "steps": run.steps,
            "final_loss": run.history[-1]["loss"],
            "per_rank": ranks,
        }
        Path(out).write_text(json.dumps(record), encoding="utf-8")
    if info.distributed:
        dist.barrier()  # as the DDP test worker: leave without tearing gloo down (it aborts a rank now and then)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, parallel: str, quick: bool, threads: int) -> dict[str, Any]:
    code = "from torchslim.bench.distill_fsdp import child_main; child_main()"
    child = [sys.executable, "-c", code, str(out), parallel, "quick" if quick else "full"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = child
    if parallel != "none":  # torchrun starts RANKS copies of the child command (--no-python: it is a command)
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(RANKS)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--no-python", *child]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"distill-fsdp run {parallel!r} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


def _row(variant: str, rec: dict[str, Any], base_ms: float) -> dict[str, Any]:
    ms = 1000 * rec["seconds"] / rec["steps"]
    return {
        "variant": variant,
        "latency_ms": round(ms, 1),
        "latency_p90_ms": None,
        "speedup": round(base_ms / ms, 2),
        "size_mb": round(4 * rec["params"] / 1e6, 1),
        "quality": {"final_loss": round(rec["final_loss"], 5)},
        "params": rec["params"],
        "ranks": rec["ranks"],
        "peak_rss_mb": round(max(r["peak_mb"] for r in rec["per_rank"]), 1),
        "train_mb": round(max(r["peak_mb"] - r["before_mb"] for r in rec["per_rank"]), 1),
    }


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the three distillations one after another (``data`` is unused: the models and tokens are seeded)."""
    threads = max(1, torch.get_num_threads())
    student, teacher = _SHAPES[quick]
    rows, tokens, steps = _BATCH[quick]
    with tempfile.TemporaryDirectory(prefix="torchslim-distill-fsdp-") as tmp:
        single = _launch(Path(tmp) / "none.json", "none", quick, threads)
        ddp = _launch(Path(tmp) / "ddp.json", "ddp", quick, max(1, threads // RANKS))
        fsdp = _launch(Path(tmp) / "fsdp.json", "fsdp", quick, max(1, threads // RANKS))
    base = 1000 * single["seconds"] / single["steps"]
    result_rows = [
        _row("fp32", single, base),
        _row("torchslim-distill-ddp", ddp, base),
        _row("torchslim-distill-fsdp", fsdp, base),
    ]
    notes = [
        f"student: seeded random LLaMA, {student.describe()}; teacher: {teacher.describe()}; kd loss on logits, "
        f"AdamW, {steps} steps of {rows} sequences x {tokens} random tokens (the global batch)",
        f"fp32: one process on {threads} threads; the ddp and fsdp rows: torchrun, {RANKS} ranks on this host "
        f"(gloo), {max(1, threads // RANKS)} thread(s) each",
        "peak_rss_mb: the largest peak resident set over the ranks; train_mb: the largest growth over the ranks "
        "from just before training (student and teacher loaded) to that peak",
    ]
    return TABLE.check(BenchResult(TABLE.name, result_rows, notes=notes))
