"""``Int8QAT``: quantization-aware training, then conversion to the same int8 modules as post-training quantization.

During training every selected Conv2d / Linear runs with fake-quantized weights (symmetric, per output
channel) and fake-quantized inputs: per tensor with ranges tracked by an exponential moving average
(``scheme="static"``, converted to :class:`~torchslim.quantization.int8.static.Int8StaticConv2d` /
``Int8StaticLinear``) or per token at run time (``scheme="dynamic"``, Linear only, converted to
:class:`~torchslim.quantization.int8.modules.Int8DynamicLinear`). Rounding passes gradients straight
through (STE; Bengio et al., 2013), clamping zeroes them outside the range — Jacob et al. (2018),
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference":

    ŵ = s_w · clamp(round(w / s_w), −127, 127),   x̂ = s_x · (clamp(round(x / s_x) + z, −128, 127) − z)

The training loop is :func:`torchslim.training.fit_` on ``ctx.train_data`` (cross-entropy), after
BatchNorm folding and with the activation ranges initialised from ``ctx.calibration``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.core.context import Context
    >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    >>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> ctx = Context(calibration=[(x,)], train_data=lambda: [(x, y)])
    >>> _ = compress_(m, Int8QAT(epochs=1, lr=1e-3), ctx=ctx)
    >>> [type(c).__name__ for c in m]
    ['Int8StaticLinear', 'Identity', 'Int8StaticLinear']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import run_calibration
from torchslim.core.adapters import adapt_for_
from torchslim.core.config import Config, check_positive_int, check_range, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.errors import ConfigError
from torchslim.quantization.common.primitives import (
    PerChannel,
    PerToken,
    amin_amax,
    choose_qparams,
    fake_quantize,
    qparams_from_minmax,
)
from torchslim.quantization.common.swap import swap_int8_, swappable
from torchslim.quantization.int8.modules import Int8DynamicLinear
from torchslim.quantization.int8.static import convert_static_, find_relu_pairs

__all__ = ["FakeQuantConv2d", "FakeQuantLinear", "Int8QAT"]


@register_config("int8-qat")
@dataclass(frozen=True)
class Int8QAT(Config):
    """Quantization-aware training on ``ctx.train_data``, then conversion to int8 inference modules.

    Args:
        epochs: training passes. lr: peak AdamW learning rate (small: the model is already trained).
        scheme: ``"static"`` (calibrated per-tensor activations; Conv2d and Linear; BN folded, ReLU
            fused) or ``"dynamic"`` (per-token activations at run time; Linear only).
        momentum: EMA weight of each batch's activation range (static scheme).
    """

    epochs: int = 1
    lr: float = 1e-4
    scheme: Literal["static", "dynamic"] = "static"
    momentum: float = 0.01

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs")
        check_range(self, "lr", 0.0, 1.0, low_open=True)
        check_range(self, "momentum", 0.0, 1.0, low_open=True)

    def default_select(self) -> Select:
        return Select(types=("Conv2d", "Linear") if self.scheme == "static" else ("Linear",))


class _ActRange(nn.Module):
    """EMA of the input range (per tensor) and the fake quantization it implies; dynamic per token if ``dynamic``."""

    def __init__(self, momentum: float, dynamic: bool) -> None:
        super().__init__()
        self.momentum, self.dynamic = momentum, dynamic
        self.register_buffer("min", torch.zeros(()))
        self.register_buffer("max", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def observe(self, x: torch.Tensor) -> None:
        mn, mx = amin_amax(x.detach())
        mn, mx = mn.reshape(()), mx.reshape(())
        if not bool(self.seen):
            self.min.copy_(mn)
            self.max.copy_(mx)
            self.seen.fill_(True)
        else:
            self.min.lerp_(mn, self.momentum)
            self.max.lerp_(mx, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return qparams_from_minmax(self.min, self.max, symmetric=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:  # per-token symmetric, as Int8DynamicLinear computes at run time
            scale, _ = choose_qparams(x.detach(), PerToken())
            return fake_quantize(x, scale, None, PerToken())
        if self.training:
            self.observe(x)
        scale, zp = self.qparams()
        return fake_quantize(x, scale.to(x.dtype), zp, symmetric=False)


def _fake_weight(w: torch.Tensor) -> torch.Tensor:
    # The scale follows the current weight (detached): min-max per output channel, as conversion uses.
    scale, _ = choose_qparams(w.detach(), PerChannel(0))
    return fake_quantize(w, scale.to(w.dtype), None, PerChannel(0))


class FakeQuantConv2d(nn.Conv2d):
    """Conv2d training with fake-quantized weights and inputs (an ``nn.Conv2d``, so conversion reads it as one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act(x), _fake_weight(self.weight), self.bias)


class FakeQuantLinear(nn.Linear):
    """Linear training with fake-quantized weights and inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), _fake_weight(self.weight), self.bias)


def _wrap(module: nn.Module, momentum: float, dynamic: bool) -> nn.Module:
    # Re-class in place (same parameters, same optimizer view) and attach the activation range tracker.
    module.__class__ = FakeQuantConv2d if isinstance(module, nn.Conv2d) else FakeQuantLinear
    module.act = _ActRange(momentum, dynamic).to(module.weight.device)
    return module


def _unwrap(module: nn.Module) -> nn.Module:
    module.__class__ = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    del module.act
    return module


@register_transform(Int8QAT, scope="model")
def _int8_qat(model: nn.Module, config: Int8QAT, select: Select, ctx: Context) -> nn.Module:
    from torchslim.training import fit_

    if ctx.train_data is None:
        raise ConfigError("int8-qat needs training data: give Context(train_data=...) or use a workload")
    dynamic = config.scheme == "dynamic"
    if not dynamic:
        if not ctx.calibration:
            raise ConfigError("int8-qat (static) needs calibration data to start its activation ranges")
        from torchslim.api import compress_
        from torchslim.structured import FoldBatchNorm

        compress_(model, FoldBatchNorm(), ctx=ctx)
    kinds = (nn.Linear,) if dynamic else (nn.Conv2d, nn.Linear)
    select = adapt_for_(model, select, kind=config.kind, ctx=ctx, swaps=True)  # see adapt_for_
    targets = [(n, m) for n, m in select.modules(model) if swappable(m, kinds) and type(m) in (nn.Conv2d, nn.Linear)]
    relus = {} if dynamic else find_relu_pairs(model)
    for _, m in targets:
        _wrap(m, config.momentum, dynamic)
    try:
        if not dynamic:
            _calibrate(model, ctx.calibration, targets, config.kind)
        fit_(model, ctx.train_data, epochs=config.epochs, lr=config.lr, seed=ctx.seed, desc="int8 QAT")
    except BaseException:
        for _, m in targets:
            _unwrap(m)
        raise
    qparams = {n: m.act.qparams() for n, m in targets} if not dynamic else {}
    for _, m in targets:
        _unwrap(m)
    model.eval()
    if dynamic:
        swap_int8_(model, targets, lambda n, m: Int8DynamicLinear.from_float(m), config.kind, ctx)
    else:
        convert_static_(model, targets, qparams, relus, ctx, config.kind)
    return model


def _calibrate(model: nn.Module, calibration, targets: list[tuple[str, nn.Module]], kind: str) -> None:
    """Start every activation range at the min / max its layer sees over the calibration batches."""

    def hook(name: str, tracker: _ActRange):
        def fn(mod: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            if not torch.isfinite(x).all():
                raise ConfigError(f"{kind}: calibration data reaching layer {name!r} contains NaN or Inf values")
            mn, mx = amin_amax(x)
            if bool(tracker.seen):
                mn, mx = torch.minimum(tracker.min, mn.reshape(())), torch.maximum(tracker.max, mx.reshape(()))
            tracker.min.copy_(mn.reshape(()))
            tracker.max.copy_(mx.reshape(()))
            tracker.seen.fill_(True)

        return fn

    with forward_hooks(((m, hook(n, m.act)) for n, m in targets), pre=True):
        run_calibration(model, calibration)
