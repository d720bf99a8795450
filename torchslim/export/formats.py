"""Export a (compressed) model to ONNX (``torch.onnx.export``, dynamo) or a ``torch.export`` ``.pt2``.

Shapes: the batch dimension is dynamic by default, and the sequence dimension of token inputs (see
:mod:`torchslim.export.inputs`); example inputs may be positional (a tensor or a tuple) or keyword
(a dict, e.g. a Hugging Face ``BatchEncoding``). Where the model itself fixes a dimension (a
``view(8, -1)``), the export keeps that size and a warning says so; ``dynamic=False`` exports the
example's shapes as they are. Hugging Face models whose config turns the key/value cache on are
exported with ``use_cache=False`` where they would return that cache (a one-pass forward), unless
the example inputs set it.

Verification: every export is run where it will run (ONNX Runtime for ``.onnx``, ``torch.export.load``
for ``.pt2``) at two batch sizes, the example's and another (1, or 7 when the example has batch 1,
with a different sequence length too for token inputs), and compared with the torch model. A
failure, or a relative error ``‖exported − torch‖ / ‖torch‖`` above ``tolerance``, raises
:class:`~torchslim.errors.UnsupportedModelError` (exit 5); otherwise the largest absolute difference is
returned.

Quantized modules are lowered to operators ONNX Runtime executes, with the int8 weights stored as int8
initializers (4× smaller files): dynamic int8 Linear's ``torch._int_mm`` becomes ``MatMulInteger``
(per-token activation quantization as Div/Round/Clip/Cast around it, exactly our arithmetic); int8
weight-only Linear and embeddings become ``Cast``·``Mul`` dequantization before a float ``MatMul`` /
``Gather``; static int8 convolutions export their reference path (fake-quantized activations, int8
weights dequantized in the graph), since oneDNN's prepacked weight cannot be traced. Int4 linears
become ONNX Runtime's ``MatMulNBits`` (4-bit weights in the file) and, in ``.pt2``, torch's int4
kernel (see :mod:`torchslim.export.int4`).

Example:
    >>> import tempfile, torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    >>> path = tempfile.mkdtemp() + "/m.pt2"
    >>> export_pt2(m, (torch.ones(2, 4),), path) < 1e-6
    True
    >>> torch.export.load(path).module()(torch.ones(5, 4)).shape  # any batch size
    torch.Size([5, 3])
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils import _pytree as pytree

from torchslim.errors import UnsupportedModelError
from torchslim.export.inputs import ExampleInputs, is_token_input
from torchslim.export.int4 import int4_lowered
from torchslim.io.atomic import atomic_file

log = logging.getLogger(__name__)

# Largest accepted relative error ||exported - torch|| / ||torch|| of each output: above the reference
# paths' own rounding (static int8's fake-quantized activations, bf16 kernels in torch vs fp32 in ONNX
# Runtime: a few percent at most), far below a wrong graph's (of the order of 1).
DEFAULT_TOLERANCE = 0.05

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _eager(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile``: what the exporters trace (and the reference they are checked
    against, the same function without the compilation time).

    Unwraps a ``torch.compile(model)`` wrapper, and where ``model.compile()`` (``compile=True`` of the int8
    techniques) or a compiled child is inside, exports a copy without them. The model is not changed.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> _eager(torch.compile(m)) is m
        True
    """
    import copy

    from torch._dynamo.eval_frame import OptimizedModule

    if isinstance(model, OptimizedModule):
        model = model._orig_mod
    compiled = any(
        getattr(m, "_compiled_call_impl", None) is not None or isinstance(m, OptimizedModule) for m in model.modules()
    )
    if not compiled:
        return model
    clone = copy.deepcopy(model)
    for parent in list(clone.modules()):
        parent._compiled_call_impl = None
        for name, child in list(parent.named_children()):
            if isinstance(child, OptimizedModule):
                setattr(parent, name, child._orig_mod)
    log.info("exporting %s without its torch.compile wrapper", type(model).__name__)
    return clone


def _without_bf16(model: nn.Module) -> nn.Module:
    """A float32-compute copy of a model that computes in bf16 (``CastDtype``, ``compute_dtype="bfloat16"``).

    ONNX Runtime's CPU provider has few bf16 kernels (no bf16 Conv/MatMul, and LayerNormalization then
    meets bf16 activations with float32 weights), so ONNX export computes in float32: bf16 weights and
    buffers become their (exactly equal) fp32 values, the cast hooks go, and compressed modules that
    hand on bf16 (``output_dtype``: int8 embeddings, static int8 layers) hand on float32. The outputs
    then differ from the bf16 model's by bf16 rounding only, so the exported graph is checked against
    this float32-compute copy, not against the bf16 model. The model itself is not changed.
    """
    import copy

    from torchslim.core.structure import structure_ops
    from torchslim.quantization.cast import remove_cast_hooks

    def bf16(m: nn.Module) -> bool:
        tensors = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        return any(t.dtype == torch.bfloat16 for t in tensors) or getattr(m, "output_dtype", None) == torch.bfloat16

    if not any(bf16(m) for m in model.modules()):
        return model
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        if p.dtype == torch.bfloat16:
            p.data = p.data.float()
    for m in clone.modules():
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.dtype == torch.bfloat16:
                setattr(m, name, b.float())
        if getattr(m, "output_dtype", None) == torch.bfloat16:
            m.output_dtype = torch.float32
        # The cast hooks would turn activations back into bf16; with fp32 weights they must go.
        remove_cast_hooks(m)
    log.info("exporting bf16 compute as fp32 for ONNX Runtime (%d structure ops)", len(structure_ops(model)))
    return clone


def _onnx_translations() -> dict[Any, Any]:
    """ONNX lowerings (onnxscript) for the low-bit aten kernels our modules call."""
    from onnxscript import opset18 as op

    def int_mm(a: Any, b: Any) -> Any:  # int8 [M, K] @ int8 [K, N] -> int32, as torch._int_mm
        return op.MatMulInteger(a, b)

    def weight_int8pack_mm(x: Any, w: Any, scales: Any) -> Any:  # x [M, K] float, w [N, K] int8, scales [N]
        # DequantizeLinear keeps the weight an int8 initializer (a Cast·Mul would be constant-folded to fp32).
        dequant = op.DequantizeLinear(w, op.CastLike(scales, x), axis=0)
        return op.MatMul(x, op.Transpose(dequant, perm=[1, 0]))

    def dequantize_per_channel(w: Any, scales: Any, zero_points: Any, axis: int, *_: Any, **__: Any) -> Any:
        return op.DequantizeLinear(w, scales, axis=axis)  # symmetric: our zero points are 0

    importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers quantized_decomposed ops
    table: dict[Any, Any] = {
        torch.ops.aten._int_mm.default: int_mm,
        torch.ops.quantized_decomposed.dequantize_per_channel.default: dequantize_per_channel,
    }
    if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        table[torch.ops.aten._weight_int8pack_mm.default] = weight_int8pack_mm
    return table


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int = 18,
    dynamic: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Export with ``torch.onnx.export(dynamo=True)``, run it in ONNX Runtime at two batch sizes.

    A model under ``torch.compile`` is exported as its plain module; one that computes in bf16 is
    exported computing in float32 (ONNX Runtime's CPU bf16 support is too thin, see ``_without_bf16``).

    Args:
        model: the (compressed) model; it is not changed.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        path: the ``.onnx`` file to write. It is written and verified under a hidden temporary name, then
            renamed: a failed check, a crash or a kill leaves the previous file (or none), never a partial one.
        opset: the default-domain ONNX opset.
        dynamic: dynamic batch (and token sequence) dimensions; False keeps the example's shapes.
        tolerance: largest accepted relative error ``‖exported − torch‖ / ‖torch‖`` of each output.

    Returns:
        The largest absolute difference to the torch model's outputs over the checked batch sizes (for a
        bf16-compute model: to its float32-compute copy, which is what the graph computes).

    Raises:
        UnsupportedModelError: the exporter cannot handle the model, ONNX Runtime cannot run the graph,
            or its outputs differ from the model's (the reason is in the message).
    """
    import onnxruntime as ort

    model = _eager(model.eval())
    example = _without_cache(model, ExampleInputs.of(example_inputs))
    trace = _trace_inputs(example, dynamic)
    target = _without_bf16(model)
    with int4_lowered(target, "onnx"), _quiet_onnx_exporter():
        try:
            program = torch.onnx.export(
                target,
                trace.args,
                kwargs=trace.kwargs,
                dynamo=True,
                dynamic_shapes=trace.dynamic_shapes(target) if dynamic else None,
                opset_version=opset,
                verbose=False,
                custom_translation_table=_onnx_translations(),
            )
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean "unsupported"
            raise UnsupportedModelError(f"ONNX export failed: {_reason(e)}") from None
    checks = _checks(program.exported_program, example, trace, dynamic)
    with atomic_file(path) as tmp:  # renamed onto path only once verified
        program.save(str(tmp))
        try:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise UnsupportedModelError(f"ONNX Runtime cannot load the exported graph: {_reason(e)}") from None
        names = [i.name for i in session.get_inputs()]

        def run(inputs: ExampleInputs) -> list[torch.Tensor]:
            tensors = inputs.tensors()
            if len(tensors) != len(names):
                raise UnsupportedModelError(
                    f"the ONNX graph takes inputs {names}, the example has {len(tensors)} tensors"
                )
            feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}
            return [torch.from_numpy(a) for a in session.run(None, feeds)]

        # Checked against the float32-compute copy that was exported: the graph must compute exactly that.
        # Against a bf16 model the difference is bf16's own rounding, which on small outputs (an untrained
        # classifier's logits) can exceed any fixed relative tolerance without the export being wrong.
        return _verify("ONNX Runtime", run, target, checks, tolerance)


def export_pt2(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    dynamic: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Export a ``torch.export`` ExportedProgram to ``.pt2``, reload it, run it at two batch sizes.

    Arguments, return value and errors as :func:`export_onnx`; the check runs the program reloaded
    with ``torch.export.load``.
    """
    model = _eager(model.eval())
    example = _without_cache(model, ExampleInputs.of(example_inputs))
    trace = _trace_inputs(example, dynamic)
    with int4_lowered(model, "pt2"):
        try:
            program = torch.export.export(
                model,
                trace.args,
                trace.kwargs,
                dynamic_shapes=trace.dynamic_shapes(model) if dynamic else None,
            )
        except Exception as e:  # noqa: BLE001 - any export failure means unsupported
            raise UnsupportedModelError(f"torch.export failed: {_reason(e)}") from None
    checks = _checks(program, example, trace, dynamic)
    with atomic_file(path) as tmp:  # renamed onto path only once verified
        torch.export.save(program, str(tmp))
        loaded = torch.export.load(str(tmp)).module()

        def run(inputs: ExampleInputs) -> list[torch.Tensor]:
            with torch.inference_mode():
                return _output_tensors(loaded(*inputs.args, **inputs.kwargs))

        return _verify("the reloaded .pt2", run, model, checks, tolerance)


# ---------------------------------------------------------------------------------------------- helpers


def _reason(e: BaseException) -> str:
    """One line naming why an export step failed: the innermost cause's first line, without colours.

    Example:
        >>> try:
        ...     try:
        ...         raise KeyError("no_such_op")
        ...     except KeyError as inner:
        ...         raise RuntimeError("export failed") from inner
        ... except RuntimeError as e:
        ...     _reason(e)
        "KeyError: 'no_such_op'"
    """
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, dict, Hugging Face ``ModelOutput``), flattened."""
    tensors = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise UnsupportedModelError(f"cannot compare model outputs of type {type(out).__name__}: no tensors")
    return tensors


@contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's own warnings and progress logs (torchvision missing, ...)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _without_cache(model: nn.Module, example: ExampleInputs) -> ExampleInputs:
    """Add ``use_cache=False`` for a Hugging Face model that returns its key/value cache on the example.

    A ``Cache`` object in the output is not an exportable tensor structure, and an exported forward pass
    does not continue a generation. Models that return no cache (encoders) and example inputs that set
    ``use_cache`` themselves are left as they are.
    """
    if not getattr(getattr(model, "config", None), "use_cache", False) or "use_cache" in example.kwargs:
        return example
    if "use_cache" not in inspect.signature(model.forward).parameters:
        return example
    with torch.inference_mode():
        out = model(*example.args, **example.kwargs)
    if not any(_is_hf_cache(leaf) for leaf in pytree.tree_leaves(out)):
        return example
    log.info("exporting %s with use_cache=False (no key/value cache output)", type(model).__name__)
    return ExampleInputs(example.args, {**example.kwargs, "use_cache": False})


def _is_hf_cache(value: Any) -> bool:
    return any(c.__name__ == "Cache" and c.__module__.startswith("transformers") for c in type(value).__mro__)


def _trace_inputs(example: ExampleInputs, dynamic: bool) -> ExampleInputs:
    """The inputs to trace: torch.export fixes a dynamic dimension of size 1, so trace those at 2."""
    if not dynamic:
        return example
    return example.resized(batch=2 if example.batch_size == 1 else None, seq=2 if example.seq_len == 1 else None)


def _fixed_dims(program: torch.export.ExportedProgram, trace: ExampleInputs) -> tuple[bool, bool]:
    """Whether the exported program fixed the batch / the token sequence dimension of any input."""
    batch, seq = trace.batch_size, trace.seq_len
    user = set(program.graph_signature.user_inputs)
    fixed_batch = fixed_seq = False
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" and node.name in user else None
        if not isinstance(val, torch.Tensor) or val.ndim == 0:
            continue
        fixed_batch |= is_concrete_int(val.shape[0]) and val.shape[0] == batch
        fixed_seq |= (
            is_token_input(node.name, val) and val.ndim >= 2 and is_concrete_int(val.shape[1]) and val.shape[1] == seq
        )
    return fixed_batch, fixed_seq


def _checks(
    program: torch.export.ExportedProgram, example: ExampleInputs, trace: ExampleInputs, dynamic: bool
) -> list[tuple[str, ExampleInputs]]:
    """(label, inputs) to run the export on: the example, and another batch size where the batch is dynamic."""
    batch, seq = example.batch_size, example.seq_len
    checks = [(f"batch {batch}" if batch is not None else "the example", example)]
    if not dynamic or batch is None:
        return checks
    fixed_batch, fixed_seq = _fixed_dims(program, trace)
    if fixed_batch or fixed_seq:
        what = " and ".join(w for w, f in (("batch size", fixed_batch), ("sequence length", fixed_seq)) if f)
        log.warning("the model fixes its %s: the export takes only the example's", what)
    if fixed_batch:
        return checks
    other_seq = None if seq is None or fixed_seq else (seq - 1 if seq > 1 else 2)
    other = 1 if batch != 1 else 7
    label = f"batch {other}" + (f", sequence length {other_seq}" if other_seq else "")
    return [*checks, (label, example.resized(batch=other, seq=other_seq))]


def _verify(
    runtime: str,
    run: Callable[[ExampleInputs], list[torch.Tensor]],
    model: nn.Module,
    checks: list[tuple[str, ExampleInputs]],
    tolerance: float,
) -> float:
    """Run ``run`` and ``model`` on each check's inputs; the largest absolute difference of their outputs.

    Raises:
        UnsupportedModelError: ``run`` fails, or an output differs in shape or by a relative error
            (L2 norm of the difference over the model output's) above ``tolerance``.
    """
    worst = 0.0
    for label, inputs in checks:
        with torch.inference_mode():
            ref = _output_tensors(model(*inputs.args, **inputs.kwargs))
        try:
            got = run(inputs)
        except UnsupportedModelError:
            raise
        except Exception as e:  # noqa: BLE001 - runtimes raise their own types; all mean the export fails there
            raise UnsupportedModelError(f"{runtime} fails at {label}: {_reason(e)}") from None
        if len(got) != len(ref):
            log.info("%s returns %d outputs, the model %d: comparing the first", runtime, len(got), len(ref))
            got, ref = got[:1], ref[:1]
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            if tuple(g.shape) != tuple(r.shape):
                raise UnsupportedModelError(
                    f"{runtime} output {i} at {label} has shape {tuple(g.shape)}, the model's {tuple(r.shape)}"
                )
            diff = g.detach().float().cpu() - r.detach().float().cpu()  # ONNX Runtime's outputs are on the CPU
            err = float(diff.abs().max()) if diff.numel() else 0.0
            rel = float(
                torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(r.detach().float().cpu()).clamp_min(1e-12)
            )
            if not rel <= tolerance:  # also catches NaN
                raise UnsupportedModelError(
                    f"{runtime} output {i} at {label} differs from the model: relative error {rel:.3g} "
                    f"(tolerance {tolerance:g}), max abs difference {err:.3g}"
                )
            worst = max(worst, err)
        log.info("%s matches the model at %s (max abs difference so far %.3g)", runtime, label, worst)
    return worst
