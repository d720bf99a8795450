"""``Int8Static``: calibrated int8 activations and weights for CNNs (Conv2d / Linear, BN folded, activations fused).

Steps: fold BatchNorm into the convolutions (:class:`~torchslim.structured.FoldBatchNorm`); find each
Conv2d / Linear followed by a ReLU, Hardswish or SiLU that nothing else reads (fused into the int8 kernel as
oneDNN post-ops, as PT2E's x86 lowering does; the activation module becomes ``Identity``); run ``ctx.calibration`` through the model with an observer on every target's input
(asymmetric uint8 per tensor; zero point 0 after a ReLU); swap in :class:`Int8StaticConv2d` /
:class:`Int8StaticLinear`, which quantize their input with the calibrated ``(scale, zero_point)`` and
call oneDNN's int8 convolution (``torch.ops.onednn.qconv2d_pointwise``: uint8 × int8 → int32 with the
dequantize, bias and activation fused, the x86 kernel ``torch.compile`` uses for PT2E static quantization) or
``torch._int_mm`` for Linear. Consecutive convolutions separated only by max-pooling / fused ReLUs
pass uint8 activations (each conv requantizes its output with the next one's input qparams), so
activations are quantized once: in MobileNet / EfficientNet blocks the expansion conv + Hardswish / SiLU
hands uint8 codes to the depthwise conv. Weights are symmetric per output channel.

Modules hold plain int8 / float32 buffers; the oneDNN prepacked weight is a cache rebuilt from them.
Where oneDNN is unavailable (other devices) they compute the same quantized arithmetic in float.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.core.context import Context
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    >>> x = torch.rand(8, 1, 8, 8); ref = m(x)
    >>> _ = compress_(m, Int8Static(), ctx=Context(calibration=[(x,)]))
    >>> [type(c).__name__ for c in m]
    ['Int8StaticConv2d', 'Identity', 'Identity', 'Flatten', 'Int8StaticLinear']
    >>> bool(sqnr(ref, m(x)) > 25)
    True
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import run_calibration
from torchslim.core.adapters import adapt_for_
from torchslim.core.config import Config, register_config
from torchslim.core.context import Context
from torchslim.core.inference import version_key
from torchslim.core.modspec import register_spec_module
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import record_foreign_layers, replace_module_
from torchslim.errors import ConfigError
from torchslim.quantization.common.observers import Observer, make_observer
from torchslim.quantization.common.primitives import NonFiniteError
from torchslim.quantization.common.swap import swap_int8_, swappable
from torchslim.quantization.int8 import static_small
from torchslim.quantization.int8.modules import (
    dtype_from_spec,
    dtype_spec,
    float_dtype_of,
    int_mm,
    quantize_weight_per_channel,
)
from torchslim.quantization.int8.static_add import conv_accumulate, exact_int8_kernels, quantize_codes
from torchslim.quantization.int8.static_paths import (
    FUSED_ACTIVATIONS,
    Int8MaxPool2d,
    find_activation_pairs,
    find_int8_paths,
    find_pool_ends,
    find_relu_pairs,
)
from torchslim.quantization.int8.static_residual import int8_residuals_
from torchslim.quantization.int8.static_scale import int8_channel_scales_

__all__ = [
    "Int8MaxPool2d",
    "Int8Static",
    "Int8StaticConv2d",
    "Int8StaticLinear",
    "calibrate_inputs",
    "find_activation_pairs",
    "find_int8_paths",
    "find_relu_pairs",
]


@register_config("int8-static")
@dataclass(frozen=True)
class Int8Static(Config):
    """Static int8 for CNNs: calibrated per-tensor uint8 activations, per-channel int8 weights.

    Args:
        observer: how activation ranges are chosen from ``ctx.calibration``: ``"minmax"``,
            ``"moving-average"``, ``"percentile"`` or ``"mse"``.
        fold_bn: fold BatchNorm into the preceding conv / linear first.
        fuse_relu: fuse a ReLU, Hardswish or SiLU that directly follows a conv / linear into its kernel
            (the name predates Hardswish / SiLU fusion).
    """

    observer: Literal["minmax", "moving-average", "percentile", "mse"] = "minmax"
    fold_bn: bool = True
    fuse_relu: bool = True

    def default_select(self) -> Select:
        return Select(types=("Conv2d", "Linear"))


class _StaticInt8(nn.Module):
    """Shared buffers: int8 weight, per-channel scale, float32 bias, and the calibrated input qparams."""

    torchslim_compressed = True

    def _init_buffers(self, weight_shape: tuple[int, ...], device: Any = None) -> None:
        out = weight_shape[0]
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out, device=device))
        self.register_buffer("bias", torch.zeros(out, device=device))
        self.register_buffer("input_scale", torch.ones((), device=device))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32, device=device))
        # Used when ``output_uint8``: the next int8 layer's input qparams, so activations stay uint8 between them.
        self.register_buffer("output_scale", torch.ones((), device=device))
        self.register_buffer("output_zero_point", torch.zeros((), dtype=torch.int32, device=device))
        self._packed: tuple[Any, torch.Tensor] | None = None
        # The float activations handed on: the original layer's dtype (a bfloat16 model stays bfloat16;
        # the int8 arithmetic and its float32 scales are the same). Saved in the spec when not float32.
        self.output_dtype: torch.dtype = torch.float32

    def _to_output_dtype(self, y: torch.Tensor) -> torch.Tensor:
        return y if y.dtype == torch.uint8 or y.dtype == self.output_dtype else y.to(self.output_dtype)

    def _load(self, module: nn.Module, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        q, s = quantize_weight_per_channel(module.weight.detach())
        self.weight.copy_(q)
        self.weight_scale.copy_(s)
        if module.bias is not None:
            self.bias.copy_(module.bias.detach().float())
        self.input_scale.copy_(scale.reshape(()))
        self.input_zero_point.copy_(zero_point.reshape(()))
        self.output_dtype = float_dtype_of(module.weight)

    def set_output_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Emit uint8 activations quantized with the consumer's ``(scale, zero_point)`` (oneDNN path)."""
        self.output_uint8 = True
        self.output_scale.copy_(scale.reshape(()))
        self.output_zero_point.copy_(zero_point.reshape(()))

    def _out(self) -> tuple[float, int, torch.dtype]:
        if self.output_uint8:
            return float(self.output_scale), int(self.output_zero_point) + 128, torch.uint8
        return 1.0, 0, torch.float32

    @staticmethod
    def _quantize_input(x: torch.Tensor, x_scale: float, x_zp: int) -> torch.Tensor:
        """uint8 codes with the calibrated scale and (uint8) zero point; out-of-range values clamp."""
        if x.dtype == torch.uint8:  # already quantized by the producing int8 layer with our qparams
            return x
        return quantize_codes(x, x_scale, x_zp)  # clamp(round(x / s) + zp, 0, 255) in one pass on CPU

    def _fake_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return (x.float() - (self.input_zero_point.float() + 128.0)) * self.input_scale
        zp = self.input_zero_point.float()
        q = torch.clamp(torch.round(x.float() * (1.0 / self.input_scale)) + zp, -128, 127)
        return (q - zp) * self.input_scale

    def _onednn_ok(self, x: torch.Tensor) -> bool:
        # Under torch.export / ONNX export the prepacked oneDNN weight cannot be traced: the reference path
        # (int8 weights dequantized in the graph, activations fake-quantized) is exported instead.
        # On CPUs whose int8 kernels saturate (x86 without VNNI: see exact_int8_kernels), the reference path too.
        return (
            x.is_cpu  # x.device.type costs a microsecond a call
            and torch.backends.mkldnn.is_available()
            and exact_int8_kernels()
            and not torch.jit.is_scripting()
            and not torch.compiler.is_exporting()
        )

    def _cache(self, prepack) -> tuple[Any, float, int, float, int, torch.Tensor]:
        """``(packed weight, x_scale, x_zp (uint8), out_scale, out_zp (uint8), zero w_zp)``, rebuilt when a buffer changes.

        Python floats avoid a ``.item()`` per call; ``_version`` changes whenever a buffer is written
        (``load_state_dict`` included), so a stale prepacked weight is never used (:func:`version_key`).
        """
        b = self._buffers  # the dict itself: nn.Module.__getattr__ costs about a microsecond per buffer
        bufs = (b["weight"], b["input_scale"], b["input_zero_point"], b["output_scale"], b["output_zero_point"])
        key = version_key(bufs)
        if self._packed is None or self._packed[0] != key:
            x_scale, x_zp = float(self.input_scale), int(self.input_zero_point) + 128
            out = self._out()
            w_zp = torch.zeros(self.weight.shape[0], dtype=torch.int32)
            self._packed = (key, (prepack(x_scale, x_zp), x_scale, x_zp, out[0], out[1], w_zp))
        return self._packed[1]

    def _dequantized_weight(self) -> torch.Tensor:
        if torch.compiler.is_exporting():
            # One op the ONNX exporter lowers to DequantizeLinear: the weight stays an int8 initializer
            # (a Cast·Mul would be constant-folded into fp32 weights, 4× the file).
            importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers quantized_decomposed ops

            zeros = torch.zeros_like(self.weight_scale, dtype=torch.int64)
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.weight, self.weight_scale, zeros, 0, -128, 127, torch.int8
            )
        return self.weight.float() * self.weight_scale.reshape(-1, *([1] * (self.weight.dim() - 1)))


@register_spec_module
class Int8StaticConv2d(_StaticInt8):
    """Conv2d with int8 weights and calibrated uint8 activations; optional fused activation.

    ``activation``: ``"none"``, ``"relu"``, ``"hardswish"`` or ``"swish"`` (SiLU), applied by oneDNN before
    the output is requantized (``relu=True`` is ``activation="relu"``).

    ``forward(x [B, C, H, W] float) -> [B, O, H', W']`` float32 (channels-last on the oneDNN path).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        relu: bool = False,
        output_uint8: bool = False,
        device: Any = None,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.activation = _activation(activation, relu)
        self.relu = self.activation == "relu"
        self.output_uint8 = output_uint8
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        # oneDNN wants lists; built once instead of on every call (the layers run in ~0.1 ms).
        self._args = (list(self.stride), list(self.padding), list(self.dilation))
        self._init_buffers((out_channels, in_channels // groups, *self.kernel_size), device)

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        relu: bool = False,
        activation: str | None = None,
    ):
        """Quantize ``conv`` with the calibrated input ``(scale, zero_point)`` (int8 range, asymmetric)."""
        if not _convertible(conv):
            raise ValueError(f"padding {conv.padding!r} / mode {conv.padding_mode!r} not supported")
        mod = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            relu,
            device=conv.weight.device,
            activation=activation,
        )
        mod._load(conv, scale, zero_point)
        return mod

    def torchslim_spec(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("in_channels", "out_channels", "groups", "relu", "output_uint8")},
            **_activation_spec(self.activation),
            **{k: list(getattr(self, k)) for k in ("kernel_size", "stride", "padding", "dilation")},
            **dtype_spec(self.output_dtype),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8StaticConv2d:
        mod = cls(
            int(spec["in_channels"]),
            int(spec["out_channels"]),
            tuple(spec["kernel_size"]),
            tuple(spec["stride"]),
            tuple(spec["padding"]),
            tuple(spec["dilation"]),
            int(spec["groups"]),
            bool(spec["relu"]),
            bool(spec.get("output_uint8", False)),
            activation=spec.get("activation"),
        )
        mod.output_dtype = dtype_from_spec(spec)
        return mod

    # Set by the residual-add rewrite (:func:`~torchslim.quantization.int8.static_add.conv_accumulate`):
    # None, or whether a ReLU follows the fused residual add.
    accumulate_relu: bool | None = None

    def set_accumulate(self, scale: float, zero_point: int, relu: bool) -> None:
        """Add a second operand's uint8 codes (qparams ``scale``, uint8-range ``zero_point``) to the output."""
        self.accumulate_relu = relu
        self.register_buffer("accum_scale", torch.tensor(float(scale)))
        self.register_buffer("accum_zero_point", torch.tensor(int(zero_point), dtype=torch.int32))

    def forward(self, x: torch.Tensor, accum: torch.Tensor | None = None) -> torch.Tensor:
        if accum is not None:
            return conv_accumulate(self, x, accum)
        if not self._onednn_ok(x):
            y = F.conv2d(
                self._fake_input(x),
                self._dequantized_weight(),
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
            return self._to_output_dtype(_ACTIVATION_FNS[self.activation](y))
        if static_small.eligible(self, x):  # small 1×1 layers: torchslim's C++ loop, without oneDNN's call setup
            return self._to_output_dtype(static_small.small_conv1x1(self, x))
        packed, x_scale, x_zp, out_scale, out_zp, w_zp = self._cache(
            lambda x_scale, x_zp: torch.ops.onednn.qconv_prepack(
                self.weight,
                self.weight_scale,
                x_scale,
                x_zp,
                *self._args,
                self.groups,
                None,
            )
        )
        qx = static_small.image_codes(x, x_scale, x_zp)  # a stem's image: codes and layout in one pass
        if qx is None:
            qx = self._quantize_input(x, x_scale, x_zp).contiguous(memory_format=torch.channels_last)
        return self._to_output_dtype(torch.ops.onednn.qconv2d_pointwise(
            qx, x_scale, x_zp, packed, self.weight_scale, w_zp,
            self.bias, *self._args, self.groups,
            out_scale, out_zp, torch.uint8 if self.output_uint8 else torch.float32, self.activation, [], "",
        ))  # fmt: skip


@register_spec_module
class Int8StaticLinear(_StaticInt8):
    """Linear with int8 weights and calibrated uint8 activations (per tensor); optional fused activation
    (``"relu"``, ``"hardswish"``, ``"swish"``: applied to the float result)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        relu: bool = False,
        device: Any = None,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = _activation(activation, relu)
        self.relu = self.activation == "relu"
        self.output_uint8 = False  # a Linear's output always goes back to float here
        self._init_buffers((out_features, in_features), device)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        relu: bool = False,
        activation: str | None = None,
    ):
        mod = cls(linear.in_features, linear.out_features, relu, device=linear.weight.device, activation=activation)
        mod._load(linear, scale, zero_point)
        return mod

    def torchslim_spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "relu": self.relu,
            **_activation_spec(self.activation),
            **dtype_spec(self.output_dtype),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8StaticLinear:
        mod = cls(
            int(spec["in_features"]), int(spec["out_features"]), bool(spec["relu"]), activation=spec.get("activation")
        )
        mod.output_dtype = dtype_from_spec(spec)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._onednn_ok(x):
            y = F.linear(self._fake_input(x), self._dequantized_weight(), self.bias)
            return self._to_output_dtype(_ACTIVATION_FNS[self.activation](y))
        if static_small.linear_eligible(self, x):  # torchslim's 1×1 loop, the input quantization and activation fused
            return static_small.small_linear(self, x)
        shape = x.shape
        # int8 x int8 -> int32 with torch._int_mm (oneDNN's qlinear was 30x slower at these small shapes):
        # y = s_x * s_w[n] * (sum_k q_x[k] q_w[n, k] - z_x * sum_k q_w[n, k]) + b[n]
        colsum, x_scale, x_zp, _, _, _ = self._cache(lambda x_scale, x_zp: self.weight.sum(dim=1, dtype=torch.int32))
        zp = x_zp - 128  # back to the int8 range the stored zero point uses
        x2 = x.reshape(-1, shape[-1]).float()
        qx = torch.clamp(torch.round(x2 * (1.0 / x_scale)) + zp, -128, 127).to(torch.int8)
        acc = int_mm(qx, self.weight.t()) - zp * colsum
        y = torch.addcmul(self.bias, acc.float(), self.weight_scale, value=x_scale)
        if self.relu:
            y = torch.relu_(y)
        elif self.activation != "none":
            y = _ACTIVATION_FNS[self.activation](y)
        return self._to_output_dtype(y.reshape(*shape[:-1], self.out_features))


@register_transform(Int8Static, scope="model")
def _int8_static(model: nn.Module, config: Int8Static, select: Select, ctx: Context) -> nn.Module:
    if not ctx.calibration:
        raise ConfigError("int8-static: needs calibration data; pass ctx=Context(calibration=[batch, ...])")
    if config.fold_bn:
        from torchslim.api import compress_
        from torchslim.structured import FoldBatchNorm

        compress_(model, FoldBatchNorm(), ctx=ctx)
    select = adapt_for_(model, select, kind=config.kind, ctx=ctx, swaps=True)  # see adapt_for_
    record_foreign_layers(model, config.kind, ctx)
    targets = [(n, m) for n, m in select.modules(model) if swappable(m, (nn.Conv2d, nn.Linear))]
    relus = find_activation_pairs(model) if config.fuse_relu else {}
    # Max-pools that may pool uint8 codes and dequantize for float readers: observe what they pool.
    ends = find_pool_ends(model, {n for n, m in targets if _convertible(m)}, set(relus.values()))
    pools = [(t[-1], model.get_submodule(t[-1])) for t in ends.values()]
    observers = calibrate_inputs(model, [*targets, *pools], ctx.calibration, kind=config.kind, observer=config.observer)
    qparams = {n: obs.qparams(symmetric=False) for n, obs in observers.items()}
    pool_qparams = {n: qparams.pop(n) for n, _ in pools}
    convert_static_(model, targets, qparams, relus, ctx, config.kind, pool_qparams)
    int8_residuals_(model, ctx, config.kind, config.observer, Int8StaticConv2d)  # residual adds, head pool on codes
    int8_channel_scales_(model, ctx, config.kind, Int8StaticConv2d, config.observer)  # SE products to codes
    return model


def convert_static_(
    model: nn.Module,
    targets: list[tuple[str, nn.Module]],
    qparams: dict[str, tuple[torch.Tensor, torch.Tensor]],
    relus: dict[str, str],
    ctx: Context,
    kind: str,
    pool_qparams: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[str]:
    """Swap each Conv2d / Linear target for its int8 module with input ``qparams[name]``; fuse the activations
    ``relus`` names (``{layer: activation module}``: ReLU, Hardswish or SiLU); record.

    Shared by :class:`Int8Static` (qparams from observers) and :class:`~torchslim.quantization.int8.qat.Int8QAT`
    (qparams learned during training). ``pool_qparams``: calibrated input qparams of max-pools
    (:func:`find_pool_ends`) that pool their producer's uint8 codes and dequantize them for float readers.
    Returns the swapped names.
    """

    def make(name: str, module: nn.Module) -> nn.Module | None:
        scale, zp = qparams[name]
        act = FUSED_ACTIVATIONS[type(model.get_submodule(relus[name]))] if name in relus else "none"
        try:
            if isinstance(module, nn.Conv2d):
                mod = Int8StaticConv2d.from_float(module, scale, zp, activation=act)
                if name in chains:
                    mod.set_output_qparams(*qparams[chains[name]])
                elif name in ends:
                    mod.set_output_qparams(*pool_qparams[ends[name][-1]])
                return mod
            return Int8StaticLinear.from_float(module, scale, zp, activation=act)
        except NonFiniteError:
            raise
        except ValueError as e:  # unsupported padding mode and the like: skip and list
            ctx.record(f"{kind}: skipped {name} ({e})")
            return None

    # A ReLU becomes Identity wherever it is called: fuse it only when every layer it follows is converted.
    converted = {n for n, m in targets if _convertible(m)}
    relus = {n: r for n, r in relus.items() if all(p in converted for p, r2 in relus.items() if r2 == r)}
    # A producer may only emit uint8 along a path proven safe (only converted consumers and fused ReLUs
    # count); the max-pools on it learn to pool uint8.
    paths = find_int8_paths(model, converted, set(relus.values()))
    chains = {a: b for a, (b, _) in paths.items()}
    pool_qparams = pool_qparams or {}
    ends = find_pool_ends(model, converted, set(relus.values())) if pool_qparams else {}
    ends = {a: t for a, t in ends.items() if t[-1] in pool_qparams and a not in chains}
    through = [n for a in chains for n in paths[a][1]] + [n for t in ends.values() for n in t]
    pools = sorted({n for n in through if type(model.get_submodule(n)) is nn.MaxPool2d})
    pool_targets = [(n, model.get_submodule(n)) for n in pools]
    dequantize = {t[-1] for t in ends.values()}

    def make_pool(name: str, module: nn.Module) -> nn.Module:
        pool = Int8MaxPool2d.from_float(module)
        if name in dequantize:
            pool.set_dequantize(*pool_qparams[name])
        return pool

    def make_any(name: str, module: nn.Module) -> nn.Module | None:
        return make_pool(name, module) if name in pools else make(name, module)

    # One recorded swap for layers and pools (the replay rebuilds both); the count names the layers.
    done = [n for n in swap_int8_(model, [*targets, *pool_targets], make_any, kind, None) if n not in pools]
    ctx.record(f"{kind}: quantized {len(done)} module(s)")
    fused = [relus[n] for n in done if n in relus]
    if fused:
        _fuse_relus(model, fused)
        record_op(model, "int8-fuse-relu", {"modules": fused})
    return done


_ACTIVATION_FNS = {"none": lambda y: y, "relu": F.relu, "hardswish": F.hardswish, "swish": F.silu}


def _activation(activation: str | None, relu: bool) -> str:
    name = activation if activation is not None else ("relu" if relu else "none")
    if name not in _ACTIVATION_FNS:
        raise ValueError(f"fused activation {name!r} not supported; choose from {', '.join(_ACTIVATION_FNS)}")
    return name


def _activation_spec(activation: str) -> dict[str, str]:
    # Saved only where ``relu`` does not say it, so artifacts from before Hardswish / SiLU fusion load unchanged.
    return {} if activation in ("none", "relu") else {"activation": activation}


def _convertible(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, nn.Linear)


def calibrate_inputs(
    model: nn.Module, targets: list[tuple[str, nn.Module]], calibration: Any, kind: str, observer: str
) -> dict[str, Observer]:
    """An observer per target, fed with that module's inputs over the calibration batches."""
    observers = {n: make_observer(observer) for n, _ in targets}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            try:
                observers[name].update(args[0])
            except NonFiniteError:
                raise ConfigError(
                    f"{kind}: calibration data reaching layer {name!r} contains NaN or Inf values"
                ) from None

        return fn

    with forward_hooks(((m, hook(n)) for n, m in targets), pre=True):
        run_calibration(model, calibration)
    for n, obs in observers.items():
        if obs.batches == 0:
            raise ConfigError(f"{kind}: layer {n!r} was never called by the calibration data")
    return observers


def _fuse_relus(model: nn.Module, names: list[str]) -> None:
    for name in names:
        replace_module_(model, name, nn.Identity())


@register_replay("int8-fuse-relu")
def _replay_fuse_relu(model: nn.Module, data: dict) -> nn.Module:
    _fuse_relus(model, list(data["modules"]))
    return model
