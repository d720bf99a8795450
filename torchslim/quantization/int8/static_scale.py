"""Squeeze-and-excite products quantized in one pass for :class:`~torchslim.quantization.int8.static.Int8Static`.

A squeeze-and-excite block (Hu et al. 2018, arXiv:1709.01507) ends with ``x * gate``: the feature map times a
per-image, per-channel gate, read by the next 1×1 convolution. Left in float, the product is written to memory
as float32 (four bytes per value, at batch 32 a fresh allocation of tens of megabytes per block) and read back
by the convolution only to be quantized. :func:`int8_channel_scales_` traces the model (int8 modules as
leaves) and finds each two-operand ``*`` whose only reader is an int8 convolution; the product becomes an
:class:`Int8ChannelScale`, which writes the convolution's uint8 input codes directly: the gate product and the
quantization in one pass (:func:`torchslim.kernels.qconv.scale_quantize`), one byte per value. Operands of
other shapes multiply in torch and quantize with the same qparams, so the codes are those the convolution
computed before. When the map is an int8 convolution's output read only by the product and by the block's
squeeze (a global average pool), that convolution hands on uint8 codes in its calibrated output range, the
pool (:class:`~torchslim.quantization.int8.static_add.Int8GlobalAvgPool2d`) and the product read them: one
more 8-bit rounding, as ONNX Runtime's and torch.ao's static graphs have there, and a quarter of the bytes. The module that owns the product is replaced by its ``torch.fx`` GraphModule (state-dict
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

from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import run_calibration
from torchslim.core.context import Context
from torchslim.core.modspec import register_spec_module
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.kernels import qconv
from torchslim.quantization.common.observers import make_observer
from torchslim.quantization.int8.static_add import (
    Int8GlobalAvgPool2d,
    QParams,
    _buffer_float,
    _QParamBuffers,
    dequantize_codes,
    quantize_codes,
)
from torchslim.quantization.int8.static_residual import (
    _call_counts,
    _int8_range,
    _is_global_pool,
    _readers,
    _source,
    _trace,
)

__all__ = ["Int8ChannelScale", "int8_channel_scales_"]

_MULS = (operator.mul, torch.mul)


def _gate_of(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(map, gate)`` when one operand is a float32 (or uint8 codes) ``[N, C, H, W]`` map and the other its
    float32 ``[N, C, 1, 1]`` gate, on CPU; else None."""
    for x, g in ((a, b), (b, a)):
        if (
            x.dim() == 4
            and g.dim() == 4
            and x.dtype in (torch.float32, torch.uint8)
            and g.dtype == torch.float32
            and x.device.type == "cpu"
            and g.device.type == "cpu"
            and g.shape == (x.shape[0], x.shape[1], 1, 1)
        ):
            return x, g
    return None


@register_spec_module
class Int8ChannelScale(_QParamBuffers):
    """``a * b`` as the uint8 codes of the int8 convolution that reads it (qparams: its input's, uint8 zero point).
    An operand of uint8 codes (the map, from an int8 conv) is read in the ``input`` qparams."""

    def __init__(self) -> None:
        super().__init__()
        self._qparam_buffer("output")
        self._qparam_buffer("input")

    def set_qparams(self, qparams: QParams, input_qparams: QParams | None = None) -> None:
        self._write("output", qparams)
        if input_qparams is not None:
            self._write("input", input_qparams)

    def torchslim_spec(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8ChannelScale:
        return cls()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_scripting():  # tensor qparams: no Python numbers
            a, b = (_buffer_float(t, self.input_scale, self.input_zero_point) for t in (a, b))
            q = torch.round((a * b) / self.output_scale) + self.output_zero_point.float()
            return q.clamp(0, 255).to(torch.uint8)
        (scale, zp), x_qparams = self._numbers(("output", "input"))
        pair = _gate_of(a, b)
        if pair is None:  # other shapes or devices: torch's product, quantized with the same qparams
            a, b = (t if t.dtype != torch.uint8 else dequantize_codes(t, *x_qparams) for t in (a, b))
            return quantize_codes(a * b, scale, zp)
        return qconv.scale_quantize(pair[0], pair[1], scale, zp, x_qparams)


def int8_channel_scales_(
    model: nn.Module, ctx: Context, kind: str, conv_type: type[nn.Module], observer: str = "minmax"
) -> int:
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
        owners.setdefault(owner, []).append(
            {"index": index, "qparams": qparams, "map": _map_codes(node, modules, calls, conv_type)}
        )
    if not owners:
        return 0
    maps = [spec["map"] for specs in owners.values() for spec in specs if spec["map"] is not None]
    map_qparams = _observe(model, [m["conv"] for m in maps], ctx.calibration, observer)
    data = {"owners": {o: [s["index"] for s in specs] for o, specs in owners.items()}, "maps": maps}
    _apply(model, data)
    for owner, specs in owners.items():
        gm = model.get_submodule(owner)
        for spec in specs:
            input_qp = map_qparams[spec["map"]["conv"]] if spec["map"] is not None else None
            gm.get_submodule(f"int8_scale{spec['index']}").set_qparams(spec["qparams"], input_qp)
    for m in maps:
        model.get_submodule(m["conv"]).set_output_qparams(*_int8_range(map_qparams[m["conv"]]))
        model.get_submodule(m["pool"]).set_qparams(map_qparams[m["conv"]])
    record_op(model, "int8-channel-scale", data)
    count = sum(len(v) for v in owners.values())
    ctx.record(f"{kind}: {count} channel-scaled product(s) quantized in one pass")
    return count


def _map_codes(mul: torch.fx.Node, modules: dict[str, nn.Module], calls: dict[str, int], conv_type: type) -> Any:
    """``{"conv", "pool"}`` when the product's map is an int8 conv's output read only by the product and by a
    global average pool (the squeeze of the same block): that conv can hand both uint8 codes; else None."""
    for arg in mul.args:
        conv = _source(arg, modules)
        if not (conv.op == "call_module" and isinstance(mod := modules[conv.target], conv_type)):
            continue
        if calls[conv.target] != 1 or mod.output_uint8 or mod.accumulate_relu is not None:
            continue
        readers = _readers(conv, modules)
        pools = [r for r in readers if _is_global_pool(r, modules) and calls[r.target] == 1]
        if len(readers) == 2 and len(pools) == 1 and mul in readers:
            return {"conv": conv.target, "pool": pools[0].target}
    return None


def _observe(model: nn.Module, convs: list[str], calibration: Any, observer: str) -> dict[str, QParams]:
    """The calibrated output range of each conv in ``convs``: uint8 qparams ``(scale, zero point)``."""
    if not convs:
        return {}
    observers = {name: make_observer(observer) for name in convs}
    hooks = [(model.get_submodule(n), lambda m, args, out, obs=obs: obs.update(out)) for n, obs in observers.items()]
    with forward_hooks(hooks):
        run_calibration(model, calibration)
    out = {}
    for name, obs in observers.items():
        scale, zp = obs.qparams(symmetric=False)
        out[name] = (float(scale), int(zp) + 128)
    return out


def _apply(model: nn.Module, data: dict[str, Any]) -> None:
    """Swap the planned product nodes (the owner's own, counted in graph order) for Int8ChannelScale calls;
    the maps' convs hand on codes, which their pools read."""
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
    for m in data.get("maps", []):  # the qparams buffers arrive with the weights (or are set next)
        model.get_submodule(m["conv"]).output_uint8 = True
        replace_module_(model, m["pool"], Int8GlobalAvgPool2d())


@register_replay("int8-channel-scale")
def _replay_int8_channel_scale(model: nn.Module, data: dict) -> nn.Module:
    _apply(model, data)
    return model
