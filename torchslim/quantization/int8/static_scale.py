"""Squeeze-and-excite products quantized in one pass for :class:`~torchslim.quantization.int8.static.Int8Static`.

A squeeze-and-excite block (Hu et al. 2018, arXiv:1709.01507) ends with ``x * gate``: the feature map times a
per-image, per-channel gate, read by the next 1×1 convolution. Left in float, the product is written to memory
as float32 (four bytes per value, at batch 32 a fresh allocation of tens of megabytes per block) and read back
by the convolution only to be quantized. :func:`int8_channel_scales_` traces the model (int8 modules as
leaves) and finds each two-operand ``*`` whose only reader is an int8 convolution; the product becomes an
:class:`Int8ChannelScale`, which writes the convolution's uint8 input codes directly: the gate product and the
quantization in one pass (:func:`torchslim.kernels.qconv.scale_quantize`), one byte per value. Operands of
other shapes multiply in torch and quantize with the same qparams, so the codes are those the convolution
computed before. The module that owns the product is replaced by its ``torch.fx`` GraphModule (state-dict
names unchanged) and the ``int8-channel-scale`` op replays the rewrite on load. A product in the root
module's own ``forward`` stays float (the root cannot be replaced in place).

Example:
    >>> import torch
    >>> scale = Int8ChannelScale(); scale.set_qparams((0.25, 10))
    >>> x, gate = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]]), torch.tensor([0.5, 2.0]).view(1, 2, 1, 1)
    >>> scale(x, gate).flatten().tolist()  # round(x * gate / 0.25) + 10
    [12, 14, 34, 42]
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from torchslim.core.context import Context
from torchslim.core.modspec import register_spec_module
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.kernels import qconv
from torchslim.quantization.int8.static_add import QParams, _QParamBuffers, quantize_codes
from torchslim.quantization.int8.static_residual import _call_counts, _readers, _source, _trace

__all__ = ["Int8ChannelScale", "int8_channel_scales_"]

_MULS = (operator.mul, torch.mul)


def _gate_of(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(map, gate)`` when one operand is a float32 ``[N, C, H, W]`` map and the other its ``[N, C, 1, 1]``
    gate, on CPU; else None."""
    for x, g in ((a, b), (b, a)):
        if (
            x.dim() == 4
            and g.dim() == 4
            and x.dtype == torch.float32
            and g.dtype == torch.float32
            and x.device.type == "cpu"
            and g.device.type == "cpu"
            and g.shape == (x.shape[0], x.shape[1], 1, 1)
        ):
            return x, g
    return None


@register_spec_module
class Int8ChannelScale(_QParamBuffers):
    """``a * b`` as the uint8 codes of the int8 convolution that reads it (qparams: its input's, uint8 zero point)."""

    def __init__(self) -> None:
        super().__init__()
        self._qparam_buffer("output")

    def set_qparams(self, qparams: QParams) -> None:
        self._write("output", qparams)

    def torchslim_spec(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8ChannelScale:
        return cls()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_scripting():  # tensor qparams: no Python numbers
            q = torch.round((a * b).float() / self.output_scale) + self.output_zero_point.float()
            return q.clamp(0, 255).to(torch.uint8)
        ((scale, zp),) = self._numbers(("output",))
        pair = _gate_of(a, b)
        if pair is None:  # other shapes or devices: torch's product, quantized with the same qparams
            return quantize_codes(a * b, scale, zp)
        return qconv.scale_quantize(pair[0], pair[1], scale, zp)


def int8_channel_scales_(model: nn.Module, ctx: Context, kind: str, conv_type: type[nn.Module]) -> int:
    """Rewrite the products read only by an int8 convolution (see the module docstring); returns how many.

    ``conv_type``: :class:`~torchslim.quantization.int8.static.Int8StaticConv2d` (passed in: that module
    imports this one).
    """
    try:
        graph = _trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model keeps its float products
        return 0
    modules = dict(model.named_modules())
    calls = _call_counts(graph)
    owners: dict[str, list[dict[str, Any]]] = {}
    per_owner: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _MULS:
            continue
        stack = list(node.meta.get("nn_module_stack", {}))
        if not stack:
            continue  # the root's own products stay float
        owner = stack[-1]
        index = per_owner.get(owner, 0)
        per_owner[owner] = index + 1
        if node.kwargs or len(node.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in node.args):
            continue
        readers = _readers(node, modules)
        if calls.get(owner, 0) > 1 or len(readers) != 1:
            continue
        conv = readers[0]
        if not (conv.op == "call_module" and isinstance(mod := modules[conv.target], conv_type)):
            continue
        if calls[conv.target] != 1 or mod.groups != 1 or conv.kwargs:
            continue
        if _source(conv.args[0], modules) is not node or any(_source(a, modules) is node for a in conv.args[1:]):
            continue  # read as the residual operand of a fused add, whose codes have the add's qparams
        qparams = (float(mod.input_scale), int(mod.input_zero_point) + 128)
        owners.setdefault(owner, []).append({"index": index, "qparams": qparams})
    if not owners:
        return 0
    _apply(model, {"owners": {o: [s["index"] for s in specs] for o, specs in owners.items()}})
    for owner, specs in owners.items():
        gm = model.get_submodule(owner)
        for spec in specs:
            gm.get_submodule(f"int8_scale{spec['index']}").set_qparams(spec["qparams"])
    record_op(model, "int8-channel-scale", {"owners": {o: [s["index"] for s in specs] for o, specs in owners.items()}})
    count = sum(len(v) for v in owners.values())
    ctx.record(f"{kind}: {count} channel-scaled product(s) quantized in one pass")
    return count


def _apply(model: nn.Module, data: dict[str, Any]) -> None:
    """Swap the planned product nodes (the owner's own, counted in graph order) for Int8ChannelScale calls."""
    for owner, indices in data["owners"].items():
        module = model.get_submodule(owner)
        gm = torch.fx.GraphModule(module, _trace(module), class_name=type(module).__name__)
        # The owner's own products: nodes traced from a nested custom module carry that module on their stack.
        muls = [
            n
            for n in gm.graph.nodes
            if n.op == "call_function" and n.target in _MULS and not n.meta.get("nn_module_stack")
        ]
        for index in indices:
            node = muls[int(index)]
            gm.add_submodule(f"int8_scale{index}", Int8ChannelScale())
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(f"int8_scale{index}", tuple(node.args))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        gm.graph.lint()
        gm.recompile()
        replace_module_(model, owner, gm)


@register_replay("int8-channel-scale")
def _replay_int8_channel_scale(model: nn.Module, data: dict) -> nn.Module:
    _apply(model, data)
    return model
