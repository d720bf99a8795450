"""Where ``Int8Static`` can keep activations in uint8: the Conv2d / Linear layers whose ReLU, Hardswish or
SiLU fuses into the int8 kernel, and the conv -> conv paths (through max-pooling and fused ReLUs) along which each
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

from torchslim.core.inference import version_key
from torchslim.core.modspec import register_spec_module
from torchslim.kernels import qconv
from torchslim.quantization.int8.static_add import as_quint8, codes_of

__all__ = [
    "FUSED_ACTIVATIONS",
    "Int8MaxPool2d",
    "find_activation_pairs",
    "find_int8_paths",
    "find_pool_ends",
    "find_relu_pairs",
    "max_pool_codes",
]


# The activations oneDNN applies inside its int8 convolution before requantizing (``attr`` of
# ``qconv2d_pointwise``), as PT2E's x86 lowering fuses them: conv + ReLU / Hardswish / SiLU ("swish").
FUSED_ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Hardswish: "hardswish", nn.SiLU: "swish"}


def find_relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{layer_name: relu_name}``: :func:`find_activation_pairs` for ``nn.ReLU`` only."""
    return find_activation_pairs(model, (nn.ReLU,))


def find_activation_pairs(
    model: nn.Module, kinds: tuple[type[nn.Module], ...] = tuple(FUSED_ACTIVATIONS)
) -> dict[str, str]:
    """``{layer_name: activation_name}`` for each Conv2d / Linear whose activation (a module of exactly one
    of ``kinds``: ReLU, Hardswish, SiLU) can be fused into its int8 kernel.

    Fusing replaces the activation module by ``Identity`` at every place it is called, so a pair is
    kept only when it holds at every call site: each call of the layer is read by nothing but that
    activation module (through folded-BatchNorm ``Identity`` modules), and each call of that module reads
    such a layer. A ReLU shared with a residual add (``self.relu`` in a ResNet block) is not fused.
    Uses a ``torch.fx`` trace; a model that does not trace falls back to adjacent children of
    ``nn.Sequential`` that appear nowhere else in the model.

    Example:
        >>> find_activation_pairs(nn.Sequential(nn.Conv2d(1, 4, 1), nn.Hardswish(), nn.Conv2d(4, 4, 1), nn.SiLU()))
        {'0': '1', '2': '3'}
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure: structural scan instead
        return _sequential_pairs(model, kinds)

    def is_module(node: Any, kinds: tuple[type, ...]) -> bool:
        return (
            isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(modules.get(node.target), kinds)
        )

    layer_calls: dict[str, int] = {}
    relu_producers: dict[str, list[str | None]] = {}  # relu module -> the layer each of its calls reads (None: other)
    for node in graph.nodes:
        if is_module(node, (nn.Conv2d, nn.Linear)):
            layer_calls[node.target] = layer_calls.get(node.target, 0) + 1
        if node.op == "call_module" and type(modules.get(node.target)) in kinds:
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


def _sequential_pairs(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> dict[str, str]:
    """The untraceable fallback of :func:`find_activation_pairs`: ``Sequential`` neighbours used only there."""
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
            if j < len(kids) and type(kids[j][1]) in kinds and uses[id(kids[j][1])] == 1:
                pairs[prefix + a] = prefix + kids[j][0]
    return pairs


@register_spec_module
class Int8MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that also pools the uint8 codes an :class:`Int8StaticConv2d` passes to the next one.

    Max-pooling commutes with the monotonic quantization, so pooling the codes is exact. With
    :meth:`set_dequantize` it hands float activations on (``(code - zero_point) · scale``): the producing
    conv still writes uint8 codes and the pool reads them, a quarter of the float32 bytes, where the
    pooled map has readers that need floats. On AVX-512 CPUs channels-last codes are pooled by torchslim's
    kernel (:func:`torchslim.kernels.qconv.maxpool`, over the threads); otherwise on CPU by torch's quantized max-pool
    through a ``quint8`` view (PyTorch's plain uint8 channels-last max-pool kernel, torch 2.13, only takes
    ``H * W <= 127``: it indexes in int8 and raises beyond); elsewhere, and with indices, by
    :func:`max_pool_codes` or in float32 (exact for 0..255). Float inputs take ``nn.MaxPool2d``'s path unchanged.

    Example:
        >>> pool = Int8MaxPool2d.from_float(nn.MaxPool2d(2))
        >>> x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        >>> torch.equal(pool(x), nn.MaxPool2d(2)(x.contiguous()))
        True
    """

    torchslim_compressed = True
    _NATIVE_UINT8_MAX_PLANE = 127

    dequantize = False

    @classmethod
    def from_float(cls, pool: nn.MaxPool2d) -> Int8MaxPool2d:
        return cls(**_pool_args(pool))

    def set_dequantize(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Return float32 ``(code - zero_point - 128) · scale`` from uint8 inputs (``zero_point`` in the int8
        range, as :class:`Int8StaticConv2d` stores it); the buffers are saved with the model."""
        self.dequantize = True
        self.register_buffer("dequantize_scale", scale.detach().float().reshape(()).clone())
        self.register_buffer("dequantize_zero_point", zero_point.detach().to(torch.int32).reshape(()).clone())
        self._qparams: tuple[Any, float, int] | None = None

    def torchslim_spec(self) -> dict[str, Any]:
        return {**_pool_args(self), **({"dequantize": True} if self.dequantize else {})}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8MaxPool2d:
        pool = cls(**{k: spec[k] for k in _POOL_ARGS})
        if spec.get("dequantize"):
            pool.set_dequantize(torch.ones(()), torch.zeros((), dtype=torch.int32))  # filled by load_state_dict
        return pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8 and x.device.type == "cpu" and not self.return_indices and x.dim() == 4:
            kernel, stride, padding, dilation = self._window()
            if self._native(x, dilation):  # torchslim's kernel: AVX-512, split over the threads
                y = qconv.maxpool(x, kernel, stride, padding)
            else:
                # torch's quantized max-pool on a quint8 view of the codes: exact, and several times faster than
                # pooling in float32 or :func:`max_pool_codes` (the scale is irrelevant to a maximum).
                q = as_quint8(x, 1.0, 0)
                y = codes_of(nn.functional.max_pool2d(q, kernel, stride, padding, dilation, ceil_mode=self.ceil_mode))
            return self._dequantize(y.float()) if self.dequantize else y
        if x.dtype == torch.uint8 and x.shape[-2] * x.shape[-1] > self._NATIVE_UINT8_MAX_PLANE:
            if not self.ceil_mode and not self.return_indices and x.dim() == 4:
                y = max_pool_codes(x, *self._window())
                return self._dequantize(y.float()) if self.dequantize else y
            y = super().forward(x.float())
            return self._dequantize(y) if self.dequantize else y.to(torch.uint8)
        y = super().forward(x)
        return self._dequantize(y.float()) if self.dequantize and y.dtype == torch.uint8 else y

    def _native(self, x: torch.Tensor, dilation: tuple[int, int]) -> bool:
        """Whether :func:`torchslim.kernels.qconv.maxpool` takes ``x``: built with its AVX-512 path (the portable
        loop is slower than torch's), channels-last, dilation 1, floor mode, and not while exporting."""
        return (
            dilation == (1, 1)
            and not self.ceil_mode
            and x.is_contiguous(memory_format=torch.channels_last)
            and qconv.vnni()
            and not torch.jit.is_scripting()
            and not torch.compiler.is_exporting()
        )

    def _window(self) -> tuple[tuple[int, int], ...]:
        return tuple(_pair(getattr(self, k)) for k in ("kernel_size", "stride", "padding", "dilation"))

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        bufs = (self.dequantize_scale, self.dequantize_zero_point)
        key = version_key(bufs)
        if self._qparams is None or self._qparams[0] != key:  # Python numbers: no .item() per call
            self._qparams = (key, float(bufs[0]), int(bufs[1]) + 128)
        _, scale, zp = self._qparams
        return codes.sub_(zp).mul_(scale)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def max_pool_codes(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """2-D max-pooling of uint8 codes ``[B, C, H, W]`` (floor mode) as the running maximum of the window's
    strided views, in the input's memory format.

    Hand-written because PyTorch's uint8 channels-last max-pool refuses maps over 127 elements (it counts
    in the element type) and its contiguous uint8 kernel is slower than pooling in float32; pooling the
    codes reads a quarter of the float32 bytes. Padding with code 0 is exact: 0 is the smallest code and
    every window holds at least one element of the map.

    Example:
        >>> x = torch.randint(0, 256, (2, 3, 17, 16), dtype=torch.uint8)
        >>> ref = nn.functional.max_pool2d(x.float(), 3, 2, 1).to(torch.uint8)
        >>> torch.equal(max_pool_codes(x, (3, 3), (2, 2), (1, 1), (1, 1)), ref)
        True
    """
    h, w = x.shape[-2:]
    out_h = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    xp = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out: torch.Tensor | None = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, c = i * dilation[0], j * dilation[1]
            rows = slice(r, r + stride[0] * (out_h - 1) + 1, stride[0])
            view = xp[:, :, rows, c : c + stride[1] * (out_w - 1) + 1 : stride[1]]
            out = view.clone(memory_format=fmt) if out is None else torch.maximum(out, view, out=out)
    assert out is not None  # kernel sizes are positive
    return out


_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")


def _pool_args(pool: nn.MaxPool2d) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(pool, k)) for k in _POOL_ARGS)}


# Modules an int8 activation may pass through on its way to the next int8 layer (exact types: a subclass
# may override forward). Max-pools in such a path become Int8MaxPool2d.
_PASS_THROUGH = (nn.Identity, nn.MaxPool2d, Int8MaxPool2d, *FUSED_ACTIVATIONS)


def _walk(node: Any, modules: dict[str, nn.Module], names: set[str], fused: set[str]) -> tuple[str | None, list[str]]:
    """From a producer's call: ``(consumer or None, pass-through module names)`` along its single-reader chain."""
    cur, through = node, []
    while len(cur.users) == 1:
        (nxt,) = cur.users
        mod = modules.get(nxt.target) if nxt.op == "call_module" else None
        if nxt.target in names and isinstance(mod, nn.Conv2d):
            return nxt.target, through
        if type(mod) not in _PASS_THROUGH or (type(mod) in FUSED_ACTIVATIONS and nxt.target not in fused):
            break
        through = [*through, nxt.target]
        cur = nxt
    return None, through


def find_pool_ends(model: nn.Module, names: set[str], fused_relus: set[str]) -> dict[str, list[str]]:
    """``{producer: pass-through names ending at a max-pool}`` for Conv2d producers with no int8 consumer
    (:func:`find_int8_paths` finds none) whose single-reader chain of ``Identity`` / fused activations /
    ``MaxPool2d`` reaches a max-pool: the producer emits uint8, the last max-pool pools the codes and
    dequantizes for its readers (:meth:`Int8MaxPool2d.set_dequantize`). Every call of the producer must take
    the same chain. Untraceable models get none.

    Example:
        >>> class Stem(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.relu, self.pool, self.next = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1)
        ...     def forward(self, x):
        ...         y = self.pool(self.relu(self.conv(x)))
        ...         return self.next(y) + y
        >>> find_pool_ends(Stem(), {"conv", "next"}, {"relu"})
        {'conv': ['relu', 'pool']}
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models just keep float activations
        return {}
    modules = dict(model.named_modules())
    found: dict[str, list[tuple[str | None, list[str]]]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in names and isinstance(modules[node.target], nn.Conv2d):
            found.setdefault(node.target, []).append(_walk(node, modules, names, fused_relus))
    ends = {}
    for producer, sites in found.items():
        consumer, through = sites[0]
        pools = [i for i, n in enumerate(through) if isinstance(modules[n], nn.MaxPool2d)]
        if consumer is None and pools and all(s == sites[0] for s in sites):
            ends[producer] = through[: pools[-1] + 1]
    return ends


def find_int8_paths(model: nn.Module, names: set[str], fused_relus: set[str]) -> dict[str, tuple[str, list[str]]]:
    """``{producer: (consumer, pass-through module names)}`` for Conv2d pairs whose activation can stay uint8.

    ``fused_relus``: the activation modules (ReLU, Hardswish, SiLU) fused into their layers. From every call
    of the producer, the path must be a single-reader chain of ``Identity`` / ``MaxPool2d`` / activations
    fused into the producer (max-pooling commutes with the monotonic
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
        consumer, through = _walk(node, modules, names, fused_relus)
        found.setdefault(node.target, []).append(None if consumer is None else (consumer, through))
    paths = {}
    for producer, sites in found.items():
        consumers = {None if p is None else p[0] for p in sites}
        if len(consumers) == 1 and None not in consumers:
            paths[producer] = (sites[0][0], sorted({n for p in sites for n in p[1]}))  # type: ignore[index]
    return paths
