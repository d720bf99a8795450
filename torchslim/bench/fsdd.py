"""``torchslim bench fsdd-kws --data DIR``: a keyword spotter on real recordings, compressed end to end.

The fsdd-kws workload (Free Spoken Digit Dataset, 40 log-mels, see :mod:`torchslim.workloads.fsdd`):
the 256-channel DS-CNN teacher against

- ``torchslim-student-kd``: the 48-channel DS-CNN student (:func:`~torchslim.workloads.fsdd.build_student`,
  fresh weights) distilled from the teacher (Hinton KD, :data:`STUDENT_KD`), fp32;
- ``torchslim-int8-static``: the teacher with the built-in ``int8-static`` recipe's
  :class:`~torchslim.quantization.Int8Static` (BN folded, ReLU fused, calibrated uint8 activations, oneDNN
  int8 convolutions);
- ``torchslim-kws-tiny``: the built-in ``kws-tiny`` recipe (the same student shapes carved out of the
  teacher by channel pruning → fine-tuned by distilling the teacher → static int8);
- ``peer-torch.ao-int8-static``: ``torch.ao.quantization`` FX static quantization of the teacher (x86
  qconfig; deprecated but shipped), size = ``torch.save`` bytes of its state dict.

Quality: ``accuracy`` (FSDD's official test split: takes 0-4 of the five training speakers) and
``accuracy_speaker_out`` (every take of the held-out speaker). ``artifact_kb``: the ``ts.save`` folder
on disk (weights, structure, manifest), reloaded and checked before it counts. Latency: one utterance
(``[1, 40, 101]``) per call, as an always-on spotter runs, timed round-robin in one process.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, BenchTable, Variant, model_variant, recipe_config, threads
from torchslim.bench.peers import torch_ao_static
from torchslim.distillation import DistillConfig, distill
from torchslim.measure import count_macs
from torchslim.recipes import Recipe, load_recipe, run_recipe

__all__ = ["STUDENT_KD", "TABLE", "bench", "kws_tiny_recipe", "saved_bytes"]

TABLE = BenchTable(
    name="fsdd-kws",
    workload="fsdd-kws",
    rows=("fp32", "torchslim-student-kd", "torchslim-int8-static", "torchslim-kws-tiny", "peer-torch.ao-int8-static"),
    metrics=("accuracy", "accuracy_speaker_out"),
    columns=("params", "artifact_kb", "macs"),
    recipes={"torchslim-int8-static": "int8-static", "torchslim-kws-tiny": "kws-tiny"},
    rounds=(10, 40),
    warmup=(3, 10),
    calls_per_round=20,
)

# The student row's objective: the same as the kws-tiny recipe's distillation step, from fresh weights.
STUDENT_KD = DistillConfig(alpha=0.9, temperature=4.0, epochs=30, lr=3e-3)


def kws_tiny_recipe() -> Recipe:
    """The built-in ``kws-tiny`` recipe, read from its own file (a broken neighbour file cannot stop it).

    Example:
        >>> [s.config.kind for s in kws_tiny_recipe().steps]
        ['channel-pruning', 'distill', 'int8-static']
    """
    from importlib import resources

    with resources.as_file(resources.files("torchslim.recipes") / "builtin" / "kws-tiny.yaml") as path:
        return load_recipe(path)


def saved_bytes(model: nn.Module, factory: Any) -> int:
    """Bytes on disk of ``ts.save(model)`` (every file of the folder), after checking it reloads identically.

    Example:
        >>> import torch.nn as nn
        >>> saved_bytes(nn.Linear(4, 2), lambda: nn.Linear(4, 2)) > 40
        True
    """
    from torchslim.io import load, save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "artifact"
        save(model, out)
        back = load(out, factory=factory)
        ref, got = model.state_dict(), back.state_dict()
        if ref.keys() != got.keys() or any(not torch.equal(ref[k], got[k]) for k in ref):
            raise AssertionError("the saved artifact does not reload to the same tensors")
        return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the benchmark on the FSDD recordings in ``data`` (``quick`` only shortens the latency timing)."""
    from torchslim.workloads.fsdd import build_student, build_teacher

    recipe = kws_tiny_recipe()  # before any long work: a bad recipe fails fast
    wl, teacher, ctx = TABLE.setup(data)
    x = ctx.example_inputs

    with threads(1):  # training: small ops, a second thread only adds synchronisation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            student = build_student()
        student = distill(student, teacher, wl.train_data(seed=0), STUDENT_KD, desc="student-kd")
        tiny, run = run_recipe(copy.deepcopy(teacher), recipe, ctx, measure_steps=False)
    int8_static = compress_(copy.deepcopy(teacher), recipe_config(TABLE.recipes["torchslim-int8-static"]), ctx=ctx)
    peer, peer_size = torch_ao_static(teacher, x, ctx.calibration)

    def variant(name: str, model: nn.Module, factory: Any = None, size: int | None = None) -> Variant:
        model.eval()
        on_disk = saved_bytes(model, factory) if factory is not None else size
        quality = lambda: wl.evaluate(model, "test")  # noqa: E731
        extra = {"artifact_kb": round(on_disk / 1024, 1), "macs": count_macs(model, x, per_sample=True)}
        return model_variant(name, model, x, quality, size_bytes=size, extra=extra)

    variants = [
        variant("fp32", teacher, build_teacher),
        variant("torchslim-student-kd", student, build_student),
        variant("torchslim-int8-static", int8_static, build_teacher),
        variant("torchslim-kws-tiny", tiny, build_teacher),
        variant("peer-torch.ao-int8-static", peer, size=peer_size),
    ]
    result = TABLE.run(variants, quick)
    rows = {r["variant"]: r for r in result.rows}
    base, tiny_row = rows["fp32"], rows["torchslim-kws-tiny"]
    drop = 100 * (base["quality"]["accuracy"] - tiny_row["quality"]["accuracy"])
    ratio = base["artifact_kb"] / tiny_row["artifact_kb"]
    checks = {
        "teacher accuracy >= 97%": base["quality"]["accuracy"] >= 0.97,
        "kws-tiny drop <= 1.5 points": drop <= 1.5,
        "kws-tiny artifact >= 20x smaller": ratio >= 20,
        "kws-tiny artifact <= 64 KB": tiny_row["artifact_kb"] <= 64,
        "kws-tiny faster per utterance": tiny_row["speedup"] > 1,
    }
    result.notes += [
        f"latency per utterance (batch [1, 40, 101]); accuracy on {len(wl.splits()['test_y'])} official test clips "
        f"of the training speakers, accuracy_speaker_out on {len(wl.splits()['speaker_out_y'])} clips of "
        f"{wl.held_out_speaker!r} (never trained on)",
        f"kws-tiny: accuracy drop {drop:+.2f} points, artifact {ratio:.1f}x smaller, {tiny_row['speedup']:.2f}x faster",
        "targets: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in checks.items()),
        f"student-kd: {STUDENT_KD.to_json()}",
        *[f"kws-tiny: {e}" for s in run.steps for e in s.events],
    ]
    return result
