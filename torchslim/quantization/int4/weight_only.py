"""``Int4WeightOnly``: group-wise int4 Linear weights (RTN, GPTQ, AWQ or HQQ), float activations.

Selected ``nn.Linear`` layers become :class:`~torchslim.quantization.int4.modules.Int4WeightOnlyLinear`
(packed two codes per byte, bf16 scale and zero per group: 4.5 bits per weight at g = 32,
4.125 at g = 128). The methods:

- ``rtn``: round to nearest (:mod:`~torchslim.quantization.int4.rtn`), no data;
- ``hqq``: half-quadratic zero-point optimisation (:mod:`.hqq`), no data;
- ``gptq``: second-order error compensation (:mod:`.gptq`), needs ``ctx.calibration``;
- ``awq``: activation-aware per-input-channel scaling (:mod:`.awq`), needs ``ctx.calibration``.

Calibrated methods take each layer's input Hessian from the shared calibration pass
(:func:`torchslim.calibration.stats.collect_input_stats`), layer by layer (``sequential``): the
forward stops at the layer being calibrated, and every earlier layer is already int4, so later layers
see (and compensate) the error of earlier ones while memory stays at one Hessian. A Hessian that is
rank-deficient (fewer calibration tokens than inputs) is damped; when even 1000× damping does not give
a Cholesky factor the layer falls back to RTN; both are recorded in ``ctx.events``. A group size that
does not divide a layer's inputs skips that layer (listed), or raises with ``on_bad_group="error"``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.core.context import Context
    >>> m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> ctx = Context(calibration=[torch.randn(16, 64)])
    >>> _ = compress_(m, Int4WeightOnly(group_size=32, method="gptq"), ctx=ctx)
    >>> type(m[0]).__name__, m[0].group_size
    ('Int4WeightOnlyLinear', 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from torchslim.calibration.packed import SymmetricPacked
from torchslim.calibration.stats import collect_input_stats
from torchslim.core.config import Config, check_positive_int, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.progress import progress as progress_task
from torchslim.core.registry import register_transform
from torchslim.core.search import Choice, searchable
from torchslim.core.select import Select
from torchslim.core.walker import replace_module_
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.quantization.common.swap import record_swaps, split_targets
from torchslim.quantization.int4.awq import awq_quantize
from torchslim.quantization.int4.gptq import gptq_quantize
from torchslim.quantization.int4.hqq import hqq_quantize
from torchslim.quantization.int4.modules import Int4WeightOnlyLinear
from torchslim.quantization.int4.primitives import GROUP_SIZES, check_group_size
from torchslim.quantization.int4.rtn import rtn_quantize
from torchslim.quantization.int4.w4a8 import Int4W4A8Linear

__all__ = [
    "CALIBRATED_METHODS",
    "Int4WeightOnly",
    "calibrated_swap_",
    "check_finite_weights",
    "float_standin",
    "int4_linear",
    "int4_targets",
]

CALIBRATED_METHODS = ("gptq", "awq")


@register_config("int4-weight-only")
@dataclass(frozen=True)
class Int4WeightOnly(Config):
    """Int4 weights in groups of ``group_size`` input columns, float (bf16 kernel) activations.

    Args:
        group_size: 32, 64, 128 or 256 input columns per (scale, zero); smaller is more accurate and larger.
        method: ``"rtn"``, ``"gptq"`` (needs calibration), ``"awq"`` (needs calibration) or ``"hqq"``.
        damp: GPTQ dampening λ as a fraction of the Hessian's mean diagonal.
        blocksize: GPTQ lazy-update block (columns).
        act_order: GPTQ visits columns by decreasing activation energy.
        sequential: calibrate each layer on the outputs of the already-quantized earlier layers
            (one forward per layer, stopped at that layer); False: one pass over the float model.
        on_bad_group: ``"skip"`` leaves layers whose in_features the group size does not divide in
            float and lists them; ``"error"`` raises ConfigError instead.
        kernel: run torch's int4 kernels where they apply (False: dequantize + matmul everywhere).
        activations: ``"bf16"`` (W4A16: :class:`~torchslim.quantization.int4.modules.Int4WeightOnlyLinear`
            on torch's int4 kernel) or ``"int8"`` (W4A8:
            :class:`~torchslim.quantization.int4.w4a8.Int4W4A8Linear`, the weight in the W4A8 kernel's
            layout; torchslim's VNNI kernel with activations quantized to int8 per token, for decode
            and prefill alike). ``kernel`` does not apply to ``"int8"``.
        progress: show a transient progress bar over the layers during calibration (on a terminal).
    """

    group_size: int = searchable(128, Choice((32, 64, 128), name="int4_group_size", always=True))
    method: Literal["rtn", "gptq", "awq", "hqq"] = searchable(
        "rtn", Choice(("rtn", "hqq", "gptq", "awq"), name="int4_method")
    )
    damp: float = 0.01
    blocksize: int = 128
    act_order: bool = True
    sequential: bool = True
    on_bad_group: Literal["skip", "error"] = "skip"
    kernel: bool = True
    activations: Literal["bf16", "int8"] = "bf16"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.group_size not in GROUP_SIZES or isinstance(self.group_size, bool):
            fail(self, "group_size", f"must be one of {', '.join(map(str, GROUP_SIZES))}, got {self.group_size!r}")
        if self.method not in ("rtn", "gptq", "awq", "hqq"):
            fail(self, "method", f"must be 'rtn', 'gptq', 'awq' or 'hqq', got {self.method!r}")
        check_range(self, "damp", 0.0, 1.0, low_open=True, hint="a fraction of mean diag(H), usually 0.01")
        check_positive_int(self, "blocksize")
        if self.on_bad_group not in ("skip", "error"):
            fail(self, "on_bad_group", f"must be 'skip' or 'error', got {self.on_bad_group!r}")
        if self.activations not in ("bf16", "int8"):
            fail(self, "activations", f"must be 'bf16' or 'int8', got {self.activations!r}")
        for f in ("act_order", "sequential", "kernel", "progress"):
            if not isinstance(getattr(self, f), bool):
                fail(self, f, f"must be true or false, got {getattr(self, f)!r}")

    def default_select(self) -> Select:
        return Select(types=("Linear",))


def int4_linear(
    linear: nn.Linear,
    config: Int4WeightOnly,
    hessian: torch.Tensor | SymmetricPacked | None = None,
    notes: list[str] | None = None,
) -> Int4WeightOnlyLinear | Int4W4A8Linear:
    """Quantize one Linear with ``config.method`` (``hessian`` ``[K, K]`` for GPTQ / AWQ; None: RTN for them).

    A packed Hessian (:class:`~torchslim.calibration.packed.SymmetricPacked`) is released by GPTQ once read.

    The module is an ``Int4W4A8Linear`` when ``config.activations == "int8"``, else an ``Int4WeightOnlyLinear``.

    ``notes`` receives a line when a calibrated method had to fall back to RTN.

    Example:
        >>> lin = nn.Linear(64, 16)
        >>> int4_linear(lin, Int4WeightOnly(group_size=32, method="hqq")).group_size
        32
    """
    weight = linear.weight.detach()  # GPTQ converts it a band at a time: no float32 copy of the whole
    g, method = config.group_size, config.method
    input_scale = None
    if method == "hqq":
        t = hqq_quantize(weight.float(), g)
    elif method in CALIBRATED_METHODS and hessian is not None:
        try:
            if method == "gptq":
                t = gptq_quantize(
                    weight, hessian, g, blocksize=config.blocksize, damp=config.damp, act_order=config.act_order
                )
            else:
                full = hessian.full() if isinstance(hessian, SymmetricPacked) else hessian
                input_scale, t = awq_quantize(weight.float(), full, g)
        except (torch.linalg.LinAlgError, ValueError) as e:
            if notes is not None:
                notes.append(f"{method} failed ({str(e).splitlines()[0]}); fell back to RTN")
            t, input_scale = rtn_quantize(weight.float(), g), None
    else:
        t = rtn_quantize(weight.float(), g)
    if config.activations == "int8":
        return Int4W4A8Linear.from_tensors(t, g, linear.bias, input_scale)
    return Int4WeightOnlyLinear.from_tensors(t, g, linear.bias, input_scale, kernel=config.kernel)


def calibrated_swap_(
    model: nn.Module,
    targets: list[tuple[str, nn.Module]],
    make: Callable[[str, nn.Module, torch.Tensor | None], nn.Module | None],
    kind: str,
    ctx: Context,
    *,
    hessians: bool,
    sequential: bool = True,
    progress: bool = True,
    packed: bool = False,
) -> list[str]:
    """Swap each ``(name, linear)`` for ``make(name, linear, hessian_or_None)`` (None: keep) in order.

    With ``hessians`` each layer's input Hessian ``2/T · X Xᵀ`` is taken from ``ctx.calibration`` by
    :func:`~torchslim.calibration.stats.collect_input_stats`: per layer on the partly swapped model
    (``sequential``) or in one pass before any swap. The swaps are recorded as one ``int8-modules``
    structure op (the generic quantized-module replay). With ``packed`` ``make`` gets the Hessian as a
    :class:`~torchslim.calibration.packed.SymmetricPacked` (half the memory; the stats hand it over, so
    a ``make`` that releases it, as GPTQ does, frees it). If anything raises, every swapped layer is put
    back first, so the model is never left half-quantized.

    Raises:
        ConfigError: ``hessians`` without calibration data, or NaN/Inf calibration inputs.
    """
    batches = ctx.calibration or []
    if hessians and not batches:
        raise ConfigError(f"{kind}: needs calibration data; pass ctx=Context(calibration=[batch, ...])")
    cache: dict[str, Any] = {}
    if hessians and not sequential:
        cache = collect_input_stats(model, dict(targets), batches, hessian=True)
    done: list[tuple[str, nn.Module, nn.Module]] = []
    try:
        with progress_task(len(targets), kind, unit="layers", enabled=progress) as bar:
            for i, (name, module) in enumerate(targets):
                bar.update(status=name)
                h = None
                if hessians:
                    stats = cache.get(name) if not sequential else None
                    if sequential:
                        stats = collect_input_stats(model, {name: module}, batches, hessian=True).get(name)
                    if stats is None:
                        ctx.record(
                            f"{kind}: {name} was never called by the calibration data; no Hessian (RTN / weight error)"
                        )
                    else:
                        h = stats.packed_hessian() if packed else stats.hessian
                        if stats.count < h.shape[0]:
                            ctx.record(
                                f"{kind}: {name}: Hessian from {stats.count} token(s) < {h.shape[0]} inputs "
                                "is rank-deficient; damped"
                            )
                new = make(name, module, h)
                bar.advance()
                if new is None:
                    continue
                # Later layers calibrate on this layer's quantized output. Until the loop ends it runs as
                # a float Linear holding the dequantized weight: the same function, without
                # dequantizing again on each of the (layers × batches) calibration forwards. The last
                # layer has no later one: no stand-in (for an LLM's head, a float copy of its largest matrix).
                later = hessians and sequential and i + 1 < len(targets)
                replace_module_(model, name, float_standin(new, module) if later else new)
                done.append((name, module, new))
        for name, _, new in done:
            replace_module_(model, name, new)
    except BaseException:
        for name, old, _ in reversed(done):
            replace_module_(model, name, old)
        raise
    if done:
        record_swaps(model, [(n, new) for n, _, new in done])
    return [n for n, _, _ in done]


def float_standin(new: nn.Module, old: nn.Module) -> nn.Module:
    """A float ``nn.Linear`` computing what the quantized ``new`` computes (for calibration forwards), in
    ``old``'s dtype and device; ``new`` itself when it holds no ``dequantized_weight`` or ``old`` is no Linear.

    Example:
        >>> from torchslim.quantization import Int4WeightOnlyLinear
        >>> old = nn.Linear(64, 16)
        >>> new = Int4WeightOnlyLinear.from_float(old, group_size=32)
        >>> lin = float_standin(new, old)
        >>> type(lin).__name__, torch.equal(lin.weight, new.dequantized_weight())
        ('Linear', True)
    """
    deq = getattr(new, "dequantized_weight", None)
    if not (callable(deq) and isinstance(old, nn.Linear)):
        return new
    w = old.weight
    # Built on the meta device, then given the dequantized weight itself: one float copy of the weight
    # at a time (no initialised weight to copy into) and no random initialisation to pay for.
    lin = nn.Linear(old.in_features, old.out_features, old.bias is not None, device="meta", dtype=w.dtype)
    with torch.no_grad():
        lin.weight = nn.Parameter(deq().to(w), requires_grad=w.requires_grad)
        if old.bias is not None:
            bias = new.bias if getattr(new, "bias", None) is not None else old.bias
            lin.bias = nn.Parameter(bias.detach().to(w).clone(), requires_grad=old.bias.requires_grad)
    return lin


def check_finite_weights(targets: list[tuple[str, nn.Module]]) -> None:
    """Raise UnsupportedModelError naming every target whose weight holds NaN or Inf."""
    bad = [n for n, m in targets if not bool(torch.isfinite(m.weight.detach()).all())]
    if bad:
        raise UnsupportedModelError(
            f"layer(s) {', '.join(repr(b) for b in bad)} have NaN/Inf weights; refusing to quantize"
        )


def int4_targets(
    model: nn.Module, select: Select, group_size: int, kind: str, ctx: Context, on_bad_group: str = "skip"
) -> list[tuple[str, nn.Module]]:
    """Selected swappable Linear layers the group size fits (others listed in ``ctx.events`` or refused).

    Raises:
        ConfigError: ``on_bad_group="error"`` and some layer's in_features is not a multiple of the group size.
        UnsupportedModelError: a selected layer has NaN/Inf weights.
    """
    targets = split_targets(model, select, (nn.Linear,), kind, ctx)
    bad = [(n, check_group_size(m.in_features, group_size)) for n, m in targets]
    bad = [(n, why) for n, why in bad if why]
    if bad and on_bad_group == "error":
        raise ConfigError(
            f"{kind}: group size {group_size} does not fit every selected layer; use a group size dividing "
            "their in_features, exclude them with select, or on_bad_group='skip'",
            [f"{n}: {why}" for n, why in bad],
        )
    if bad:
        ctx.record(f"{kind}: skipped {len(bad)} layer(s) ({'; '.join(f'{n}: {why}' for n, why in bad)})")
    names = {n for n, _ in bad}
    targets = [(n, m) for n, m in targets if n not in names]
    check_finite_weights(targets)
    return targets


@register_transform(Int4WeightOnly, scope="model")
def _int4_weight_only(model: nn.Module, config: Int4WeightOnly, select: Select, ctx: Context) -> nn.Module:
    w4a8 = ", w4a8" if config.activations == "int8" else ""
    label = f"{config.kind} ({config.method}, g{config.group_size}{w4a8})"
    targets = int4_targets(model, select, config.group_size, label, ctx, config.on_bad_group)
    calibrated = config.method in CALIBRATED_METHODS

    def make(name: str, linear: nn.Module, hessian: torch.Tensor | SymmetricPacked | None) -> nn.Module:
        notes: list[str] = []
        new = int4_linear(linear, config, hessian, notes)
        for note in notes:
            ctx.record(f"{label}: {name}: {note}")
        return new

    done = calibrated_swap_(
        model,
        targets,
        make,
        label,
        ctx,
        hessians=calibrated,
        sequential=config.sequential,
        progress=config.progress,
        packed=config.method == "gptq",
    )
    ctx.record(f"{label}: quantized {len(done)} Linear layer(s)")
    return model
