"""Keep :class:`~torchslim.quantization.int8.static.Int8Static` graphs in uint8 across residual adds.

After the convolutions are swapped, :func:`int8_residuals_` traces the model (int8 modules as leaves) and
finds each two-operand ``+`` whose operands have known qparams: the output of an int8 convolution (its
range observed on the calibration data), or a value an int8 convolution reads (that convolution's input
qparams). Such an add becomes an :class:`~torchslim.quantization.int8.static_add.Int8Add` (a ReLU that only
reads it is fused: ``add_relu``); its result takes the qparams of the convolution that reads it, or of the
global average pool (:class:`~torchslim.quantization.int8.static_add.Int8GlobalAvgPool2d`) at the head. A value
is handed on as uint8 codes only where every reader takes codes in exactly its qparams (int8 convolutions
with equal input qparams, planned adds, the pool); otherwise it stays float. The module that owns an add
(a ResNet basic block, an inverted residual) is replaced by its ``torch.fx`` GraphModule with the add
node swapped; the state-dict names are unchanged and the ``int8-residual`` op replays the rewrite on load.
An add in the root module's own ``forward`` is left in float (the root cannot be replaced in place).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import run_calibration
from torchslim.core.context import Context
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.quantization.common.observers import make_observer
from torchslim.quantization.int8.static_add import Int8Add, Int8GlobalAvgPool2d
from torchslim.quantization.int8.static_paths import Int8MaxPool2d

__all__ = ["int8_residuals_"]

_ADDS = (operator.add, torch.add)


class _Int8Tracer(torch.fx.Tracer):
    """torch.nn modules and torchslim's int8 modules are leaves (their forwards are not traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return getattr(m, "torchslim_compressed", False) or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module) -> torch.fx.Graph:
    return _Int8Tracer().trace(module)


@dataclass
class _Plan:
    adds: dict[str, dict[str, Any]] = field(default_factory=dict)  # add node -> owner, index, relu node, operands
    qparams: dict[str, tuple[float, int] | None] = field(default_factory=dict)  # value node -> qparams (None: observe)
    observe: dict[str, str] = field(default_factory=dict)  # value node -> int8 conv whose output gives its range
    pools: dict[str, str] = field(default_factory=dict)  # pool module -> the value node it pools


def int8_residuals_(model: nn.Module, ctx: Context, kind: str, observer: str, conv_type: type[nn.Module]) -> int:
    """Rewrite the model's residual adds (see the module docstring); returns how many.

    ``conv_type``: :class:`~torchslim.quantization.int8.static.Int8StaticConv2d` (passed in: that module
    imports this one).
    """
    Int8StaticConv2d = conv_type  # noqa: N806 - the class, under its own name
    try:
        graph = _trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model keeps its float adds
        return 0
    modules = dict(model.named_modules())
    plan = _plan(graph, modules, Int8StaticConv2d)
    if not plan.adds:
        return 0
    _calibrate(model, plan, ctx.calibration, observer)
    uint8 = _uint8_values(graph, modules, plan, Int8StaticConv2d)
    convs = _conv_values(graph, modules, (Int8StaticConv2d, Int8MaxPool2d))
    data = {
        "owners": _owners(plan, uint8, _fusible(graph, modules, plan, uint8, Int8StaticConv2d)),
        "convs": sorted(conv for value, conv in convs.items() if value in uint8),
        "pools": sorted(p for p, v in plan.pools.items() if v in uint8),
    }
    for name in data["convs"]:
        value = next(v for v, conv in convs.items() if conv == name)
        if not isinstance(model.get_submodule(name), Int8MaxPool2d):
            model.get_submodule(name).set_output_qparams(*_int8_range(plan.qparams[value]))
    _apply(model, data)
    for owner, adds in data["owners"].items():
        gm = model.get_submodule(owner)
        for spec in adds:
            qps = [plan.qparams[v] for v in plan.adds[spec["node"]]["values"]]
            if spec["fuse"] is None:
                gm.get_submodule(f"int8_add{spec['index']}").set_qparams(*qps)
            else:  # the conv operand takes the other one as its accumulator
                conv = model.get_submodule(spec["conv"])
                conv.set_accumulate(*qps[1 - spec["fuse"]], bool(spec["relu"]))
                conv.set_output_qparams(*_int8_range(qps[2]))
    for pool in data["pools"]:
        model.get_submodule(pool).set_qparams(plan.qparams[plan.pools[pool]])
    record_op(model, "int8-residual", {k: data[k] for k in ("owners", "convs", "pools")})
    ctx.record(f"{kind}: {sum(len(v) for v in data['owners'].values())} residual add(s) on uint8 codes")
    return sum(len(v) for v in data["owners"].values())


def _call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    """How many times the traced forward calls each module."""
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def _int8_range(qp: tuple[float, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Qparams in the int8-range zero-point convention :class:`Int8StaticConv2d` stores."""
    return torch.tensor(qp[0]), torch.tensor(qp[1] - 128, dtype=torch.int32)


def _source(node: Any, modules: dict[str, nn.Module]) -> Any:
    """The node whose value ``node`` carries, looking back through ``Identity`` modules (folded BatchNorms)."""
    while isinstance(node, torch.fx.Node) and node.op == "call_module" and type(modules[node.target]) is nn.Identity:
        node = node.args[0]
    return node


def _readers(node: torch.fx.Node, modules: dict[str, nn.Module]) -> list[torch.fx.Node]:
    """The nodes reading ``node``'s value, looking forward through ``Identity`` modules."""
    out: list[torch.fx.Node] = []
    for user in node.users:
        if user.op == "call_module" and type(modules[user.target]) is nn.Identity:
            out += _readers(user, modules)
        else:
            out.append(user)
    return out


def _conv_input_qparams(readers: list[torch.fx.Node], modules: dict[str, nn.Module], conv_type: type) -> set:
    return {
        (float(m.input_scale), int(m.input_zero_point) + 128)
        for r in readers
        if r.op == "call_module" and isinstance(m := modules[r.target], conv_type) and r.args[0] is not None
    }


def _is_global_pool(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    mod = modules.get(node.target) if node.op == "call_module" else None
    return type(mod) is nn.AdaptiveAvgPool2d and mod.output_size in (1, (1, 1))


def _plan(graph: torch.fx.Graph, modules: dict[str, nn.Module], conv_type: type) -> _Plan:
    plan = _Plan()
    calls = _call_counts(graph)
    per_owner: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _ADDS or node.kwargs or len(node.args) != 2:
            continue
        stack = list(node.meta.get("nn_module_stack", {}))
        if not stack or calls.get(stack[-1], 0) > 1 or not all(isinstance(a, torch.fx.Node) for a in node.args):
            continue  # root-level adds, shared owners and constant operands stay float
        owner = stack[-1]
        index = per_owner.get(owner, 0)
        per_owner[owner] = index + 1
        operands = [_source(a, modules) for a in node.args]
        values = [_value_qparams(v, plan, modules, conv_type) for v in operands]
        readers = _readers(node, modules)
        relu = None
        if len(readers) == 1 and readers[0].op == "call_module" and type(modules[readers[0].target]) is nn.ReLU:
            relu = readers[0] if owner in readers[0].meta.get("nn_module_stack", {}) else None
        out = relu if relu is not None else node
        out_readers = _readers(out, modules)
        out_qp = _conv_input_qparams(out_readers, modules, conv_type)
        pools = [r for r in out_readers if _is_global_pool(r, modules) and calls[r.target] == 1]
        if len(out_qp) == 1:
            plan.qparams[out.name] = out_qp.pop()
        elif not out_qp and pools:
            plan.qparams[out.name] = None  # observed at the pool's input
            plan.observe[out.name] = pools[0].target
        if any(v is None for v in values) or out.name not in plan.qparams:
            continue
        for pool in pools:
            plan.pools[pool.target] = out.name
        plan.adds[node.name] = {
            "owner": owner,
            "index": index,
            "relu": relu.name if relu is not None else None,
            "values": [v.name for v in operands] + [out.name],
        }
    return plan


def _value_qparams(node: Any, plan: _Plan, modules: dict[str, nn.Module], conv_type: type) -> bool | None:
    """Record how an add operand's qparams are known (True), or None when they are not."""
    if node.name in plan.qparams:
        return True
    mod = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(mod, Int8MaxPool2d) and mod.dequantize:  # a stem's pool: its codes' qparams
        plan.qparams[node.name] = (float(mod.dequantize_scale), int(mod.dequantize_zero_point) + 128)
        return True
    qp = _conv_input_qparams(_readers(node, modules), modules, conv_type)
    if len(qp) == 1:
        plan.qparams[node.name] = qp.pop()
        return True
    if (
        node.op == "call_module"
        and isinstance(modules[node.target], conv_type)
        and not modules[node.target].output_uint8
    ):
        plan.qparams[node.name] = None
        plan.observe[node.name] = node.target
        return True
    return None


def _calibrate(model: nn.Module, plan: _Plan, calibration: Any, observer: str) -> None:
    """Observe the values whose qparams no int8 reader gives: conv outputs (forward hooks) and pool inputs."""
    observers = {v: make_observer(observer) for v in plan.observe}
    inputs, outputs = [], []  # pool inputs (pre-hooks), conv outputs (forward hooks)
    for value, module in plan.observe.items():
        mod = model.get_submodule(module)
        obs = observers[value]
        if _is_global_pool_module(mod):
            inputs.append((mod, lambda m, args, obs=obs: obs.update(args[0])))
        else:
            outputs.append((mod, lambda m, args, out, obs=obs: obs.update(out)))
    with forward_hooks(inputs, pre=True), forward_hooks(outputs):
        run_calibration(model, calibration)
    for value, obs in observers.items():
        scale, zp = obs.qparams(symmetric=False)
        plan.qparams[value] = (float(scale), int(zp) + 128)


def _is_global_pool_module(mod: nn.Module) -> bool:
    return type(mod) is nn.AdaptiveAvgPool2d


def _conv_values(graph: torch.fx.Graph, modules: dict[str, nn.Module], kinds: tuple[type, ...]) -> dict[str, str]:
    """``{value node: module}`` for the int8 convs handing floats on and the max-pools that dequantize."""
    return {
        n.name: n.target
        for n in graph.nodes
        if n.op == "call_module"
        and isinstance(m := modules[n.target], kinds)
        and not getattr(m, "output_uint8", False)
        and getattr(m, "dequantize", True)
    }


def _uint8_values(graph: torch.fx.Graph, modules: dict[str, nn.Module], plan: _Plan, conv_type: type) -> set[str]:
    """Values handed on as codes: produced by an int8 conv or a planned add, and every reader takes codes in
    the value's qparams (an int8 conv with equal input qparams, a planned add, the planned pool)."""
    nodes = {n.name: n for n in graph.nodes}
    outputs = {s["values"][2] for s in plan.adds.values()}
    calls = _call_counts(graph)
    out = set()
    for value, qp in plan.qparams.items():
        node = nodes[value]
        is_conv = node.op == "call_module" and isinstance(modules[node.target], (conv_type, Int8MaxPool2d))
        if is_conv and calls[node.target] > 1:
            continue  # a module called twice emits one dtype: its other call sites may have float readers
        if qp is None or not (is_conv or value in outputs):
            continue
        ok = True
        for r in _readers(node, modules):
            if r.op == "call_module" and isinstance(m := modules[r.target], conv_type):
                ok &= (float(m.input_scale), int(m.input_zero_point) + 128) == qp
            elif r.op == "call_function" and r.name in plan.adds:
                ok &= value in plan.adds[r.name]["values"][:2]
            else:
                ok &= r.op == "call_module" and plan.pools.get(r.target) == value
        if ok:
            out.add(value)
    return out


def _fusible(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], plan: _Plan, uint8: set[str], conv_type: type
) -> dict[str, tuple[int, str]]:
    """``{add node: (operand index, conv)}`` for adds that fold into an operand's int8 conv (oneDNN ``sum``):
    the result is uint8 codes, the operand is a conv without a fused activation that only this add reads,
    and no node after the add reads the other operand (oneDNN writes over its buffer)."""
    nodes = {n.name: n for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    calls = _call_counts(graph)
    fused = {}
    for add, spec in plan.adds.items():
        if spec["values"][2] not in uint8:
            continue
        for i in (0, 1):
            conv, other = nodes[spec["values"][i]], nodes[spec["values"][1 - i]]
            if not (conv.op == "call_module" and isinstance(mod := modules[conv.target], conv_type)):
                continue
            late = [r for r in _readers(other, modules) if r.name != add and order[r.name] > order[add]]
            if (
                mod.activation == "none"
                and calls[conv.target] == 1
                and [r.name for r in _readers(conv, modules)] == [add]
                and not late
                and other.op != "placeholder"
            ):
                fused[add] = (i, conv.target)
                break
    return fused


def _owners(plan: _Plan, uint8: set[str], fused: dict[str, tuple[int, str]]) -> dict[str, list[dict[str, Any]]]:
    owners: dict[str, list[dict[str, Any]]] = {}
    for node, spec in plan.adds.items():
        fuse, conv = fused.get(node, (None, None))
        owners.setdefault(spec["owner"], []).append(
            {
                "node": node,
                "index": spec["index"],
                "relu": spec["relu"] is not None,
                "uint8": spec["values"][2] in uint8,
                "fuse": fuse,
                "conv": conv,
            }
        )
    return owners


def _apply(model: nn.Module, data: dict[str, Any]) -> None:
    """Swap the planned add nodes (and fused ReLUs) in their owners' GraphModules; swap the pools."""

    for owner, adds in data["owners"].items():
        module = model.get_submodule(owner)
        gm = torch.fx.GraphModule(module, _trace(module), class_name=type(module).__name__)
        add_nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _ADDS]
        for spec in adds:
            node = add_nodes[int(spec["index"])]
            if spec["fuse"] is None:
                gm.add_submodule(f"int8_add{spec['index']}", Int8Add(bool(spec["relu"]), bool(spec["uint8"])))
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_module(f"int8_add{spec['index']}", tuple(node.args))
            else:
                new = _fuse_into_conv(gm, node, int(spec["fuse"]))
                conv = model.get_submodule(spec["conv"])
                if conv.accumulate_relu is None:  # replay: the buffers arrive with the weights
                    conv.set_accumulate(1.0, 0, bool(spec["relu"]))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            _erase_chain(new, gm)
            if spec["relu"]:  # the add's only reader, maybe behind Identity modules (folded BatchNorms)
                relu = next(iter(new.users))
                while type(gm.get_submodule(relu.target)) is nn.Identity:
                    relu = next(iter(relu.users))
                relu.replace_all_uses_with(relu.args[0])
                gm.graph.erase_node(relu)
        gm.graph.lint()
        gm.recompile()
        replace_module_(model, owner, gm)
    for name in data["convs"]:
        conv = model.get_submodule(name)
        if isinstance(conv, Int8MaxPool2d):
            conv.dequantize = False  # its readers take the codes
        else:  # an Int8StaticConv2d: the qparams buffers arrive with the weights (or are set next)
            conv.output_uint8 = True
    for name in data["pools"]:
        replace_module_(model, name, Int8GlobalAvgPool2d())


def _fuse_into_conv(gm: torch.fx.GraphModule, add: torch.fx.Node, index: int) -> torch.fx.Node:
    """A call ``conv(conv_input, other_operand)`` placed at the add (after both operands are computed); the
    old conv call and the Identity calls between it and the add are erased once the add is."""
    chain = [add.args[index]]
    while type(gm.get_submodule(chain[-1].target)) is nn.Identity:
        chain.append(chain[-1].args[0])
    with gm.graph.inserting_after(add):
        new = gm.graph.call_module(chain[-1].target, (chain[-1].args[0], add.args[1 - index]))
    new.meta["erase_after_add"] = chain
    return new


def _erase_chain(new: torch.fx.Node, gm: torch.fx.GraphModule) -> None:
    for n in new.meta.pop("erase_after_add", []):  # reader first, so each has no users when erased
        gm.graph.erase_node(n)


@register_replay("int8-residual")
def _replay_int8_residual(model: nn.Module, data: dict) -> nn.Module:
    _apply(model, data)
    return model
