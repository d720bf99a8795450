"""Export a (compressed) model to ONNX (``torch.onnx.export``, dynamo) or a ``torch.export`` ``.pt2``.

Both exports are verified before they are reported: the ONNX file is run in ONNX Runtime and the
``.pt2`` is reloaded, and their outputs are compared with the torch model's on the example inputs.

Quantized modules are lowered to operators ONNX Runtime executes, with the int8 weights stored as int8
initializers (4× smaller files): dynamic int8 Linear's ``torch._int_mm`` becomes ``MatMulInteger``
(per-token activation quantization as Div/Round/Clip/Cast around it, exactly our arithmetic); int8
weight-only Linear and embeddings become ``Cast``·``Mul`` dequantization before a float ``MatMul`` /
``Gather``; static int8 convolutions export their reference path (fake-quantized activations, int8
weights dequantized in the graph), since oneDNN's prepacked weight cannot be traced.

Example:
    >>> import tempfile, torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    >>> path = tempfile.mkdtemp() + "/m.pt2"
    >>> export_pt2(m, (torch.ones(2, 4),), path) < 1e-6
    True
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import OutputExistsError, UnsupportedModelError

log = logging.getLogger(__name__)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    raise UnsupportedModelError(f"cannot compare model outputs of type {type(out).__name__}")


def _replace_into(path: Path, write: Any) -> None:
    """Write through a temporary file beside ``path`` and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputExistsError(f"cannot write {path}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _without_bf16(model: nn.Module) -> nn.Module:
    """ONNX Runtime's CPU provider has no bf16 Conv/MatMul kernels: export bf16 weights as the (exactly
    equal) fp32 values instead. The model itself is not changed."""
    import copy

    from torchslim.core.structure import structure_ops
    from torchslim.quantization.cast import remove_cast_hooks

    if not any(p.dtype == torch.bfloat16 for p in model.parameters()):
        return model
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        if p.dtype == torch.bfloat16:
            p.data = p.data.float()
    for m in clone.modules():
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.dtype == torch.bfloat16:
                setattr(m, name, b.float())
        # The cast hooks would turn activations back into bf16; with fp32 weights they must go.
        remove_cast_hooks(m)
    log.info("exporting bf16 weights as fp32 for ONNX Runtime (%d structure ops)", len(structure_ops(model)))
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


def export_onnx(model: nn.Module, example_inputs: tuple[Any, ...], path: str | Path, *, opset: int = 18) -> float:
    """Export with ``torch.onnx.export(dynamo=True)``, run it in ONNX Runtime, return the max abs error.

    Raises:
        UnsupportedModelError: the exporter cannot handle the model (the reason is in the message).
    """
    import onnxruntime as ort

    model = _without_bf16(model.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model,
                example_inputs,
                dynamo=True,
                opset_version=opset,
                verbose=False,
                custom_translation_table=_onnx_translations(),
            )
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean "unsupported"
            raise UnsupportedModelError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    path = Path(path)
    _replace_into(path, lambda tmp: program.save(tmp))
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise UnsupportedModelError(f"ONNX Runtime cannot run the exported graph: {str(e).splitlines()[0]}") from None
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), example_inputs, strict=False)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    with torch.inference_mode():
        ref = _first_tensor(model(*example_inputs)).float()
    return float((got.float() - ref).abs().max())


def export_pt2(model: nn.Module, example_inputs: tuple[Any, ...], path: str | Path) -> float:
    """Export a ``torch.export`` ExportedProgram to ``.pt2``, reload it, return the max abs error."""
    model = model.eval()
    try:
        program = torch.export.export(model, tuple(example_inputs))
    except Exception as e:  # noqa: BLE001 - any export failure means unsupported
        raise UnsupportedModelError(f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    path = Path(path)
    _replace_into(path, lambda tmp: torch.export.save(program, tmp))
    loaded = torch.export.load(str(path))
    with torch.inference_mode():
        got = _first_tensor(loaded.module()(*example_inputs))
        ref = _first_tensor(model(*example_inputs))
    return float((got.float() - ref.float()).abs().max())
