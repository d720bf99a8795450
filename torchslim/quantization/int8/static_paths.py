"""Where ``Int8Static`` can keep activations in uint8: the Conv2d / Linear layers whose ReLU fuses into
the int8 kernel, and the conv -> conv paths (through max-pooling and fused ReLUs) along which each
convolution hands the next one uint8 codes, with :class:`Int8MaxPool2d` pooling those codes.

Example:
    >>> import torch.nn as nn
    >>> find_relu_pairs(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()))
    {'0': '1'}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn as nn

from torchslim.core.modspec import register_spec_module

__all__ = ["Int8MaxPool2d", "find_int8_paths", "find_relu_pairs"]


def find_relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{layer_name: relu_name}`` for each Conv2d / Linear whose ReLU can be fused into its int8 kernel.

    Fusing replaces the ``nn.ReLU`` module by ``Identity`` at every place it is called, so a pair is
    kept only when it holds at every call site: each call of the layer is read by nothing but that
    ReLU module (through folded-BatchNorm ``Identity`` modules), and each call of that ReLU module reads
    such a layer. A ReLU shared with a residual add (``self.relu`` in a ResNet block) is not fused.
    Uses a ``torch.fx`` trace; a model that does not trace falls back to adjacent children of
    ``nn.Sequential`` that appear nowhere else in the model.
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure: structural scan instead
        return _sequential_relu_pairs(model)

    def is_module(node: Any, kinds: tuple[type, ...]) -> bool:
        return (
            isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(modules.get(node.target), kinds)
        )

    layer_calls: dict[str, int] = {}
    relu_producers: dict[str, list[str | None]] = {}  # relu module -> the layer each of its calls reads (None: other)
    for node in graph.nodes:
        if is_module(node, (nn.Conv2d, nn.Linear)):
            layer_calls[node.target] = layer_calls.get(node.target, 0) + 1
        if node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU:
            prev = node.args[0] if node.args else None
            # Folded BatchNorms leave Identity modules between the conv and its ReLU.
            while is_module(prev, (nn.Identity,)) and len(prev.users) == 1:
                prev = prev.args[0]
            ok = is_module(prev, (nn.Conv2d, nn.Linear)) and len(prev.users) == 1
            relu_producers.setdefault(node.target, []).append(prev.target if ok else None)
    relus_of: dict[str, list[str]] = {}
    for relu, producers in relu_producers.items():
        for layer in producers:
            if layer is not None:
                relus_of.setdefault(layer, []).append(relu)
    candidates = {
        layer: relus[0]
        for layer, relus in relus_of.items()
        if len(set(relus)) == 1 and len(relus) == layer_calls.get(layer, 0)
    }
    return {
        layer: relu
        for layer, relu in candidates.items()
        if all(p is not None and candidates.get(p) == relu for p in relu_producers[relu])
    }


def _sequential_relu_pairs(model: nn.Module) -> dict[str, str]:
    """The untraceable fallback of :func:`find_relu_pairs`: ``Sequential`` neighbours used only there."""
    uses: dict[int, int] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        uses[id(mod)] = uses.get(id(mod), 0) + 1
    pairs: dict[str, str] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod.named_children())
        prefix = f"{name}." if name else ""
        for i, (a, am) in enumerate(kids):
            if not isinstance(am, (nn.Conv2d, nn.Linear)) or uses[id(am)] != 1:
                continue
            j = i + 1
            while j < len(kids) and type(kids[j][1]) is nn.Identity:  # folded BatchNorms
                j += 1
            if j < len(kids) and type(kids[j][1]) is nn.ReLU and uses[id(kids[j][1])] == 1:
                pairs[prefix + a] = prefix + kids[j][0]
    return pairs


@register_spec_module
class Int8MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that also pools the uint8 codes an :class:`Int8StaticConv2d` passes to the next one.

    Max-pooling commutes with the monotonic quantization, so pooling the codes is exact. PyTorch's
    uint8 channels-last max-pool kernel (torch 2.13) only takes ``H * W <= 127`` (it indexes in int8 and
    raises beyond); larger uint8 maps are pooled in float32 (exact for 0..255) and cast back. Float
    inputs take ``nn.MaxPool2d``'s path unchanged.

    Example:
        >>> pool = Int8MaxPool2d.from_float(nn.MaxPool2d(2))
        >>> x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        >>> torch.equal(pool(x), nn.MaxPool2d(2)(x.contiguous()))
        True
    """

    torchslim_compressed = True
    _NATIVE_UINT8_MAX_PLANE = 127

    @classmethod
    def from_float(cls, pool: nn.MaxPool2d) -> Int8MaxPool2d:
        return cls(**_pool_args(pool))

    def torchslim_spec(self) -> dict[str, Any]:
        return _pool_args(self)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8MaxPool2d:
        return cls(**{k: spec[k] for k in _POOL_ARGS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8 and x.shape[-2] * x.shape[-1] > self._NATIVE_UINT8_MAX_PLANE:
            return super().forward(x.float()).to(torch.uint8)
        return super().forward(x)


_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")


def _pool_args(pool: nn.MaxPool2d) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(pool, k)) for k in _POOL_ARGS)}


# Modules an int8 activation may pass through on its way to the next int8 layer (exact types: a subclass
# may override forward). Max-pools in such a path become Int8MaxPool2d.
_PASS_THROUGH = (nn.Identity, nn.MaxPool2d, nn.ReLU, Int8MaxPool2d)


def find_int8_paths(model: nn.Module, names: set[str], fused_relus: set[str]) -> dict[str, tuple[str, list[str]]]:
    """``{producer: (consumer, pass-through module names)}`` for Conv2d pairs whose activation can stay uint8.

    From every call of the producer, the path must be a single-reader chain of ``Identity`` /
    ``MaxPool2d`` / ReLUs fused into the producer (max-pooling commutes with the monotonic
    quantization, so the uint8 codes pool exactly) ending at the consumer, and every call of the producer
    must reach the same consumer: anything else (a flatten, average pool, concatenation, residual add,
    a second reader, a function call) receives float activations. Untraceable models get no paths.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models just keep float activations between layers
        return {}
    modules = dict(model.named_modules())
    found: dict[str, list[tuple[str, list[str]] | None]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in names or not isinstance(modules[node.target], nn.Conv2d):
            continue
        cur, through, path = node, [], None
        while len(cur.users) == 1:
            (nxt,) = cur.users
            mod = modules.get(nxt.target) if nxt.op == "call_module" else None
            if nxt.target in names and isinstance(mod, nn.Conv2d):
                path = (nxt.target, through)
                break
            if type(mod) not in _PASS_THROUGH or (type(mod) is nn.ReLU and nxt.target not in fused_relus):
                break
            through = [*through, nxt.target]
            cur = nxt
        found.setdefault(node.target, []).append(path)
    paths = {}
    for producer, sites in found.items():
        consumers = {None if p is None else p[0] for p in sites}
        if len(consumers) == 1 and None not in consumers:
            paths[producer] = (sites[0][0], sorted({n for p in sites for n in p[1]}))  # type: ignore[index]
    return paths
