"""Memory preflight: estimate the extra resident memory a job will need, and refuse one that cannot fit.

The estimate counts what a job allocates *beyond* the model(s) already loaded when it is called, as a
sum of parts (bytes). With ``F`` the model's tensors as float32 (4 bytes per parameter and buffer
element), ``A`` the bytes of every leaf module's output for one batch (measured by one forward pass
with hooks, without gradients), ``r`` that batch's rows, and for each Linear/Conv layer its input
width ``k`` (``in·kh·kw`` for a convolution) and output width ``n``:

* ``serialise = 4·F``: measuring a model (after the baseline and every step) and saving it build the
  artifact in memory: the cloned state, safetensors' per-tensor byte strings, its output buffer and the
  returned bytes. ``6·F`` when a step leaves unstructured or N:M sparsity: the sparse encoder's two
  working copies come on top.
* ``copy = F``: the replacement weights a step builds next to the old ones.
* ``activations = A``: one forward pass (calibration, evaluation, latency).
* per step, the largest of (steps run one after another):

  - Hessian methods (GPTQ, AWQ, SparseGPT; Frantar et al. 2022, 2023; Lin et al. 2023):
    ``hessians = 8·(2·k² + 3·n·k)`` float64 bytes for the widest layer (the ``X Xᵀ`` sums kept as packed
    triangles with their compensation terms, then the full Hessian or GPTQ's float32 reordered copy with
    its in-place Cholesky factor: bounded by two float64 ``k × k`` matrices; three working copies of the
    weight), summed over all
    layers' ``8·k²`` instead when the step is not ``sequential`` (one pass keeps every layer's Hessian),
    plus ``8·T·k`` for the float64 copy of one batch's layer input (``T`` tokens of the batch).
  - captured layer inputs (int8 with SmoothQuant or an SQNR guard): ``2·c·L`` where ``c`` is the
    number of calibration batches and ``L`` the Linear inputs of one batch (kept, then concatenated).
  - training (distillation, QAT, fine-tuning; AdamW): ``3·P`` for the gradients and the two moment
    estimates (``P`` the trainable parameter bytes), ``F`` for the teacher copy of a recipe's
    distillation step and ``F`` for the best weights kept, and ``2·A·b/r`` for the activations saved
    for the backward pass of a batch of ``b`` rows and their gradients.
  - other pruning (magnitude, Wanda, N:M; Sun et al. 2023): ``F/4`` for the boolean masks kept for
    every layer, plus ``8·n·k`` for the widest layer's float32 scores.
  - any other step: nothing beyond ``copy``.

``distill`` (teacher and student already loaded): ``3·P + F_s`` (best weights) ``+ F_s`` (the state
copied for saving) ``+ 2·A_s·b/r + A_t·b/r``. ``tune`` (the workload's model loaded): a trial's copy
and its teacher (``2·F``), ``serialise`` and ``activations``, plus the largest of the training and
Hessian parts above.

The figures are upper bounds of the tensor memory; the interpreter, imported libraries and the
allocator's slack are not in them, so :func:`preflight` refuses only when the estimate alone exceeds
the available memory (:mod:`torchslim.measure.memlimit`).

Example:
    >>> import torch.nn as nn
    >>> est = estimate_compress(nn.Linear(64, 32), [])
    >>> est.parts["copy"], est.total  # 2080 float32 elements: copy F, serialise 4·F
    (8320, 41600)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.calibration.hooks import forward_hooks
from torchslim.core.batches import batch_size_of, call_model
from torchslim.errors import MemoryPreflightError
from torchslim.measure.memlimit import ENV_LIMIT, Available, available_memory, format_bytes

__all__ = [
    "ENV_SKIP",
    "ActivationProfile",
    "MemoryEstimate",
    "activation_profile",
    "add_preflight_arg",
    "estimate_compress",
    "estimate_distill",
    "estimate_tune",
    "fp32_bytes",
    "hessian_bytes",
    "preflight",
    "preflight_skipped",
    "trainable_bytes",
]

ENV_SKIP = "TORCHSLIM_NO_PREFLIGHT"
_HESSIAN_METHODS = ("gptq", "awq")
_TRAINING_KINDS = ("int8-qat", "finetune", "gradual-pruning")


@dataclass(frozen=True)
class MemoryEstimate:
    """Named parts of the extra memory a job needs (bytes), and the change that would shrink the largest."""

    parts: dict[str, int]
    hint: str = ""

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class ActivationProfile:
    """One forward pass: the rows of the batch, every leaf output's bytes, and the Linear inputs' bytes."""

    rows: int = 1
    outputs: int = 0
    linear_inputs: int = 0
    tokens: int = 0  # rows of the widest layer's flattened input (T in the Hessian formula)

    def scaled(self, rows: int) -> int:
        """Leaf output bytes for a batch of ``rows`` rows (activations grow linearly with the batch)."""
        return self.outputs * max(rows, 1) // max(self.rows, 1)


def _unique_tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def fp32_bytes(model: nn.Module) -> int:
    """``F``: the model's parameters and buffers as float32 (4 bytes per element, shared ones once)."""
    return 4 * sum(t.numel() for t in _unique_tensors(model))


def trainable_bytes(model: nn.Module) -> int:
    """``P``: the trainable parameters' bytes (shared ones once), at least float32 (AdamW's states are)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * max(p.element_size(), 4)  # AdamW's states are float32 at least
    return total


def _layer_widths(model: nn.Module) -> list[tuple[int, int]]:
    """``(k, n)`` of every Linear and Conv layer: input width (``in·kh·kw``) and output width."""
    widths = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            widths.append((m.in_features, m.out_features))
        elif isinstance(m, nn.modules.conv._ConvNd):
            k = m.in_channels // m.groups
            for s in m.kernel_size:
                k *= s
            widths.append((k, m.out_channels))
    return widths


def hessian_bytes(widths: Sequence[tuple[int, int]], sequential: bool = True, tokens: int = 0) -> int:
    """Float64 bytes of the Hessian methods for layers of ``(k, n)`` widths (module docstring formula).

    Example:
        >>> hessian_bytes([(4, 2), (8, 2)])  # widest layer: 8 * (2*64 + 3*16)
        1408
        >>> hessian_bytes([(4, 2), (8, 2)], sequential=False)  # + every other layer's X Xᵀ
        1536
    """
    if not widths:
        return 0
    k, n = max(widths, key=lambda w: w[0] * (w[0] + w[1]))
    in_flight = 8 * (2 * k * k + 3 * n * k) + 8 * tokens * k
    if sequential:
        return in_flight
    return in_flight + 8 * sum(kk * kk for kk, _ in widths) - 8 * k * k


@torch.no_grad()
def activation_profile(model: nn.Module, batch: Any = None, example_inputs: Any = None) -> ActivationProfile:
    """Run ``model`` once, without gradients, on ``batch`` (a calibration/training batch of any layout
    :func:`torchslim.core.batches.call_model` reads) or else on ``example_inputs`` (positional tuple or
    keyword dict) and add up what its leaf modules return and what its Linear layers receive.

    Nothing given: an empty profile (no activation terms).

    Example:
        >>> p = activation_profile(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), example_inputs=(torch.ones(2, 4),))
        >>> p.rows, p.outputs, p.linear_inputs
        (2, 128, 32)
    """
    if batch is None and example_inputs is None:
        return ActivationProfile()
    totals = {"outputs": 0, "linear_inputs": 0, "tokens": 0}

    def on_output(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                totals["outputs"] += t.numel() * t.element_size()
        if isinstance(mod, nn.Linear) and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            totals["linear_inputs"] += x.numel() * 4
            totals["tokens"] = max(totals["tokens"], x.numel() // max(x.shape[-1], 1))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    was_training = model.training
    model.eval()
    try:
        with forward_hooks((m, on_output) for m in leaves):
            if batch is not None:
                call_model(model, batch)
                rows = batch_size_of(batch)
            elif isinstance(example_inputs, Mapping):
                model(**example_inputs)
                rows = batch_size_of(example_inputs)
            else:
                inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
                model(*inputs)
                rows = batch_size_of(inputs)
    finally:
        model.train(was_training)
    return ActivationProfile(rows=rows or 1, **totals)


def _training_part(student: nn.Module, profile: ActivationProfile, batch_size: int, teacher_copy: bool) -> int:
    """``3·P`` (gradients, AdamW moments) ``+ F`` (best weights) ``[+ F teacher] + 2·A·b/r``."""
    f = fp32_bytes(student)
    return 3 * trainable_bytes(student) + f + (f if teacher_copy else 0) + 2 * profile.scaled(batch_size)


def _step_part(model: nn.Module, step: Any, profile: ActivationProfile, n_calibration: int) -> tuple[str, int]:
    """The part (name, bytes) one recipe step adds; ``step`` is its config (read by kind and fields)."""
    kind = getattr(step, "kind", "")
    sequential = bool(getattr(step, "sequential", True))
    if kind == "sparsegpt-pruning" or getattr(step, "method", None) in _HESSIAN_METHODS:
        return "hessians", hessian_bytes(_layer_widths(model), sequential, profile.tokens)
    if kind.endswith("-pruning"):
        widths = _layer_widths(model)
        return "masks", fp32_bytes(model) // 4 + 2 * 4 * max((k * n for k, n in widths), default=0)
    if getattr(step, "smoothquant", None) is not None or getattr(step, "min_sqnr_db", None) is not None:
        return "captured inputs", 2 * max(n_calibration, 1) * profile.linear_inputs
    if getattr(step, "needs_teacher", False):
        return "training", _training_part(model, profile, int(getattr(step, "batch_size", 64)), True)
    if kind in _TRAINING_KINDS or int(getattr(step, "finetune_epochs", 0) or 0) > 0:
        return "training", _training_part(model, profile, int(getattr(step, "batch_size", 64) or 64), False)
    return "", 0


def _leaves_sparsity(kind: str) -> bool:
    """A step whose result is stored by the sparse encoder (every pruning kind but structural channels)."""
    return kind.endswith("-pruning") and kind != "channel-pruning"


def _hint(part: str, hf: bool) -> str:
    if part == "hessians":
        sequential = "--sequential (block by block)" if hf else "sequential: true in the recipe step"
        return f"{sequential}, or a method without Hessians (rtn, hqq, wanda)"
    if part == "masks":
        return "pruning fewer layers at a time (select)"
    if part == "captured inputs":
        return "fewer calibration batches"
    if part == "training":
        return "a smaller batch_size in the training step"
    return "a smaller model or more memory"


def estimate_compress(
    model: nn.Module,
    steps: Sequence[Any],
    *,
    calibration: Sequence[Any] | None = None,
    example_inputs: Any = None,
    hf: bool = False,
) -> MemoryEstimate:
    """Extra memory for a recipe of ``steps`` (configs) on ``model`` (module docstring formula).

    Args:
        model: the loaded model.
        steps: the recipe's step configs, in order.
        calibration: the calibration batches (their count and the first one's activations).
        example_inputs: used for the activation profile when there is no calibration batch.
        hf: a Hugging Face model (the hint names ``--sequential``).
    """
    calibration = list(calibration or [])
    profile = activation_profile(model, calibration[0] if calibration else None, example_inputs)
    f = fp32_bytes(model)
    sparse = any(_leaves_sparsity(getattr(step, "kind", "")) for step in steps)
    parts = {"serialise": (6 if sparse else 4) * f, "copy": f, "activations": profile.outputs}
    biggest, size = "", 0
    for step in steps:
        name, n = _step_part(model, step, profile, len(calibration))
        if n > size:
            biggest, size = name, n
    if size:
        parts[biggest] = size
    return MemoryEstimate(parts, _hint(biggest, hf))


def estimate_distill(
    teacher: nn.Module, student: nn.Module, example_inputs: Any, batch_size: int, shards: int = 1
) -> MemoryEstimate:
    """Extra memory for ``torchslim distill``: the student's training plus the teacher's forward passes.

    ``shards``: the ranks FSDP splits the training state over (gradients, moments, best weights: each
    rank holds ``1/shards`` of them).
    """
    s = activation_profile(student, example_inputs=example_inputs)
    t = activation_profile(teacher, example_inputs=example_inputs)
    parts = {
        "training": -(-(3 * trainable_bytes(student) + fp32_bytes(student)) // max(1, shards)),
        "copy": fp32_bytes(student),
        "activations": 2 * s.scaled(batch_size) + t.scaled(batch_size),
    }
    hint = "a smaller --batch-size" if parts["activations"] > parts["training"] else "a smaller --student"
    return MemoryEstimate(parts, hint)


def estimate_tune(model: nn.Module, example_inputs: Any, calibration: Sequence[Any] | None = None) -> MemoryEstimate:
    """Extra memory for ``torchslim tune``: a trial's copy and its teacher, then its largest step (training
    at the distillation default batch, or a sequential Hessian method)."""
    calibration = list(calibration or [])
    profile = activation_profile(model, calibration[0] if calibration else None, example_inputs)
    training = _training_part(model, profile, 64, False)
    hessians = hessian_bytes(_layer_widths(model), True, profile.tokens)
    f = fp32_bytes(model)
    parts = {"trial copies": 2 * f, "serialise": 6 * f, "activations": profile.outputs}
    parts["training" if training >= hessians else "hessians"] = max(training, hessians)
    return MemoryEstimate(parts, "fewer or smaller built-in recipes (--builtins), or a smaller model")


def add_preflight_arg(parser: Any) -> None:
    """``--no-preflight`` on an argparse parser: run a job even when its memory estimate exceeds what is free.

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser()
        >>> add_preflight_arg(p)
        >>> p.parse_args(["--no-preflight"]).no_preflight
        True
    """
    parser.add_argument(
        "--no-preflight",
        action="store_true",
        help=f"skip the memory check before the job starts (or set {ENV_SKIP}=1; {ENV_LIMIT}=2G states the memory)",
    )


def preflight_skipped() -> bool:
    """Whether ``TORCHSLIM_NO_PREFLIGHT`` turns the check off (any value but empty and ``0``)."""
    return os.environ.get(ENV_SKIP, "") not in ("", "0")


def preflight(estimate: MemoryEstimate, command: str, available: Available | None = None) -> None:
    """Refuse a job whose estimate exceeds the memory available (``available_memory()`` when None).

    Unknown available memory, or ``TORCHSLIM_NO_PREFLIGHT=1``: no check.

    Raises:
        MemoryPreflightError: (exit 5) the estimate, the available memory and what would make it fit.

    Example:
        >>> from torchslim.measure.memlimit import Available
        >>> preflight(MemoryEstimate({"copy": 2048}, "a smaller model"), "compress", Available(1024, "test"))
        Traceback (most recent call last):
        ...
        torchslim.errors.MemoryPreflightError: compress needs about 2.0 KiB more memory (copy 2.0 KiB) but 1.0 KiB is available (test); try a smaller model, or --no-preflight to run anyway
    """
    if preflight_skipped():
        return
    available = available if available is not None else available_memory()
    if available is None or estimate.total <= available.bytes:
        return
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in estimate.parts.items() if v)
    raise MemoryPreflightError(
        f"{command} needs about {format_bytes(estimate.total)} more memory ({parts}) but "
        f"{format_bytes(available.bytes)} is available ({available.source}); try {estimate.hint}, "
        "or --no-preflight to run anyway"
    )
