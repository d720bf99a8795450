"""Fold BatchNorm into the preceding convolution or linear layer for inference.

For ``y = BN(conv(x))`` with BN statistics (mean μ, variance σ², scale γ, shift β, eps ε), the folded
convolution has ``W' = W · γ/√(σ²+ε)`` (per output channel) and ``b' = (b − μ) · γ/√(σ²+ε) + β``; the
BN becomes ``Identity``. The arithmetic is PyTorch's own ``torch.nn.utils.fusion``; this module only
finds the pairs (through a ``torch.fx`` trace, or adjacent children of ``nn.Sequential`` when the model
does not trace).

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> _ = compress_(m, FoldBatchNorm())
    >>> type(m[1]).__name__
    'Identity'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from torchslim.core.config import Config, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@register_config("fold-batchnorm")
@dataclass(frozen=True)
class FoldBatchNorm(Config):
    """Fold every BatchNorm that directly follows a Conv/Linear (whose output nothing else reads)."""


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        if isinstance(modules.get(prev.target), (*_CONV, nn.Linear)):
            pairs.append((prev.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
            if isinstance(a, (*_CONV, nn.Linear)) and isinstance(b, _BN):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


@register_transform(FoldBatchNorm, scope="model")
def _fold_batchnorm(model: nn.Module, config: FoldBatchNorm, select: Select, ctx: Context) -> nn.Module:
    try:
        pairs = _pairs_fx(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure: fall back to the structural scan
        ctx.record(
            f"fold-batchnorm: torch.fx could not trace the model ({type(e).__name__}); folding only inside nn.Sequential"
        )
        pairs = _pairs_sequential(model)
    selected = {name for name, _ in select.modules(model)}
    done = []
    for layer_name, bn_name in pairs:
        if layer_name not in selected:
            continue
        bn = model.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_mean is None:
            ctx.record(f"fold-batchnorm: {bn_name} has no running statistics; left as is")
            continue
        _fold_pair(model, layer_name, bn_name)
        done.append([layer_name, bn_name])
    if done:
        record_op(model, "fold-batchnorm", {"pairs": done})
    ctx.record(f"fold-batchnorm: folded {len(done)} BatchNorm layer(s)")
    return model


def _fold_pair(model: nn.Module, layer_name: str, bn_name: str) -> None:
    layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
    was_training = layer.training
    layer.eval()
    bn.eval()
    fused = fuse_conv_bn_eval(layer, bn) if isinstance(layer, _CONV) else fuse_linear_bn_eval(layer, bn)
    fused.train(was_training)
    replace_module_(model, layer_name, fused)
    replace_module_(model, bn_name, nn.Identity())


@register_replay("fold-batchnorm")
def _replay_fold(model: nn.Module, data: dict) -> nn.Module:
    for layer_name, bn_name in data["pairs"]:
        _fold_pair(model, layer_name, bn_name)
    return model
