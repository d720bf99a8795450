"""Unstructured and N:M pruning configs: magnitude/threshold, Wanda, SparseGPT, random, N:M.

Every config prunes the weights of the selected Linear/Conv layers; by default the first layer and the
last one (the classifier) stay dense (``keep_first_last``), because they hold few weights and most of
the accuracy. Masks go through ``torch.nn.utils.parametrize``; ``bake=True`` (the default for one-shot
pruning) makes them permanent right away so the artifact stores plain tensors with exact zeros (which
``ts.save`` then stores sparsely).

Example:
    >>> import torch, torch.nn as nn
    >>> import torchslim as ts
    >>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> _ = ts.compress_(m, MagnitudePruning(sparsity=0.75))
    >>> int((m[2].weight == 0).sum()), int((m[0].weight == 0).sum())
    (192, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from torchslim.calibration.stats import collect_input_stats
from torchslim.core.adapters import adapt_for_
from torchslim.core.config import Config, check_fraction, check_positive_int, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.progress import progress
from torchslim.core.registry import register_transform
from torchslim.core.search import Grid, searchable
from torchslim.core.select import Select
from torchslim.core.walker import record_foreign_layers
from torchslim.errors import ConfigError
from torchslim.pruning.masks import global_masks, magnitude_score, nm_mask, random_score, threshold_mask, topk_mask
from torchslim.pruning.parametrize import apply_mask_, bake_
from torchslim.pruning.sparsegpt import sparsegpt_prune

PRUNABLE = ("Linear", "Conv1d", "Conv2d")
Scope = Literal["global", "layer"]
# The fraction of weights removed, as a tuner searches it (magnitude, Wanda and gradual pruning share it).
SPARSITY = Grid(0.3, 0.95, 0.05, name="sparsity")


@dataclass(frozen=True)
class _Pruning(Config):
    def default_select(self) -> Select:
        return Select(types=PRUNABLE)


@register_config("magnitude-pruning")
@dataclass(frozen=True)
class MagnitudePruning(_Pruning):
    """Remove the smallest-magnitude weights.

    Args:
        sparsity: fraction of weights to remove (exact count), or
        threshold: remove every weight with ``|w| < threshold`` (give one of the two).
        scope: ``"global"`` ranks all selected layers together; ``"layer"`` prunes each to ``sparsity``.
        keep_first_last: leave the first and the last selected layer dense.
        bake: make the masks permanent now (False keeps parametrized masks, e.g. for training).
    """

    sparsity: float | None = searchable(None, SPARSITY)
    threshold: float | None = None
    scope: Scope = "global"
    keep_first_last: bool = True
    bake: bool = True

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            fail(self, "sparsity", "give exactly one of sparsity (a fraction) or threshold (a magnitude)")
        if self.sparsity is not None:
            check_fraction(self, "sparsity")
        if self.threshold is not None:
            check_range(self, "threshold", 0.0, float("inf"), high_open=True)


@register_config("wanda-pruning")
@dataclass(frozen=True)
class WandaPruning(_Pruning):
    """Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖ from calibration activations, pruned per output row.

    ``sequential``: calibrate each layer on the outputs of the already-pruned earlier layers.
    """

    sparsity: float = searchable(0.5, SPARSITY)
    keep_first_last: bool = True
    bake: bool = True
    sequential: bool = True

    def __post_init__(self) -> None:
        check_fraction(self, "sparsity")


@register_config("sparsegpt-pruning")
@dataclass(frozen=True)
class SparseGPTPruning(_Pruning):
    """SparseGPT (Frantar & Alistarh 2023): OBS mask selection with weight reconstruction.

    ``blocksize`` columns share one lazy update; ``damp`` is λ/mean(diag H) added for stability;
    ``sequential`` calibrates each layer on the already-pruned earlier layers' outputs.
    """

    sparsity: float = 0.5
    blocksize: int = 128
    damp: float = 0.01
    keep_first_last: bool = True
    bake: bool = True
    sequential: bool = True

    def __post_init__(self) -> None:
        check_fraction(self, "sparsity")
        check_positive_int(self, "blocksize")
        check_range(self, "damp", 0.0, 1.0, low_open=True)


@register_config("random-pruning")
@dataclass(frozen=True)
class RandomPruning(_Pruning):
    """Random weights removed (a baseline); seeded by ``Context.seed``."""

    sparsity: float = 0.5
    scope: Scope = "layer"
    keep_first_last: bool = True
    bake: bool = True

    def __post_init__(self) -> None:
        check_fraction(self, "sparsity")


@register_config("nm-pruning")
@dataclass(frozen=True)
class NMPruning(_Pruning):
    """N:M semi-structured sparsity along the input dimension (2:4, 4:8), scored by ``method``."""

    n: int = 2
    m: int = 4
    method: Literal["magnitude", "wanda", "sparsegpt"] = "magnitude"
    keep_first_last: bool = True
    bake: bool = True
    sequential: bool = True
    blocksize: int = 128
    damp: float = 0.01

    def __post_init__(self) -> None:
        check_positive_int(self, "n")
        check_positive_int(self, "m")
        if self.n >= self.m:
            fail(self, "n", f"n must be smaller than m (keep n of every m), got {self.n}:{self.m}")


def prunable_layers(model: nn.Module, select: Select, keep_first_last: bool) -> dict[str, nn.Module]:
    """Selected layers with a ``weight`` (in module order), first and last dropped if asked."""
    layers = {n: m for n, m in select.modules(model) if isinstance(getattr(m, "weight", None), torch.Tensor)}
    if keep_first_last and len(layers) > 2:
        names = list(layers)
        layers = {n: layers[n] for n in names[1:-1]}
    return layers


def adapted_layers(model: nn.Module, select: Select, config: Config, ctx: Context) -> dict[str, nn.Module]:
    """:func:`prunable_layers` after :func:`~torchslim.core.adapters.adapt_for_`.

    Hugging Face ``Conv1D`` layers (GPT-2) become equal Linear layers, so they are pruned too; an
    ``nn.MultiheadAttention`` never calls its ``out_proj`` (nor, on the inference fast path, the Linear
    layers of its ``nn.TransformerEncoderLayer``), so no calibration hook would fire: it is first
    split into separate q/k/v/out Linear layers, which are pruned like the others.
    """
    adapt_for_(model, select, kind=config.kind, ctx=ctx)
    return prunable_layers(model, select, config.keep_first_last)


def _supports_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1)


def _apply(model: nn.Module, masks: dict[str, torch.Tensor], layers: dict[str, nn.Module], config, ctx) -> nn.Module:
    record_foreign_layers(model, config.kind, ctx)
    removed = total = 0
    for name, mask in masks.items():
        apply_mask_(layers[name], mask)
        removed += int((~mask).sum())
        total += mask.numel()
    if config.bake:
        bake_(model)
    if total:
        ctx.record(f"{config.kind}: {len(masks)} layer(s), {removed}/{total} weights removed ({removed / total:.1%})")
    return model


@register_transform(MagnitudePruning, scope="model")
def _magnitude(model: nn.Module, config: MagnitudePruning, select: Select, ctx: Context) -> nn.Module:
    layers = adapted_layers(model, select, config, ctx)
    if config.threshold is not None:
        masks = {n: threshold_mask(m.weight, config.threshold) for n, m in layers.items()}
    elif config.scope == "global":
        masks = global_masks({n: magnitude_score(m.weight) for n, m in layers.items()}, config.sparsity)
    else:
        masks = {n: topk_mask(magnitude_score(m.weight), config.sparsity) for n, m in layers.items()}
    return _apply(model, masks, layers, config, ctx)


@register_transform(RandomPruning, scope="model")
def _random(model: nn.Module, config: RandomPruning, select: Select, ctx: Context) -> nn.Module:
    layers = adapted_layers(model, select, config, ctx)
    g = torch.Generator().manual_seed(ctx.seed)
    scores = {n: random_score(m.weight, g) for n, m in layers.items()}
    if config.scope == "global":
        masks = global_masks(scores, config.sparsity)
    else:
        masks = {n: topk_mask(s, config.sparsity) for n, s in scores.items()}
    return _apply(model, masks, layers, config, ctx)


def _row_topk(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda compares weights within each output row. Row r removes round(s·c·(r+1)) − round(s·c·r)
    weights, so every row loses ⌊s·c⌋ or ⌈s·c⌉ and the layer total is exactly round(s·numel)."""
    flat = score.reshape(score.shape[0], -1)
    cols = flat.shape[1]
    rows = []
    for r, row in enumerate(flat):
        k = round(sparsity * cols * (r + 1)) - round(sparsity * cols * r)
        rows.append(topk_mask(row, k / cols))
    return torch.stack(rows).reshape(score.shape)


def _calibrated_masks(
    model: nn.Module,
    layers: dict[str, nn.Module],
    ctx: Context,
    config: Config,
    *,
    method: str,
    sparsity: float = 0.0,
    n: int = 0,
    m: int = 0,
) -> dict[str, torch.Tensor]:
    """Wanda or SparseGPT masks (SparseGPT also rewrites the kept weights).

    With ``config.sequential`` (the default, as both papers do) each layer's input statistics are taken
    from the model with every earlier layer already pruned, so later layers compensate for the error
    of earlier ones; otherwise one pass over the dense model serves all layers.
    """
    hessian = method == "sparsegpt"
    usable = {k: v for k, v in layers.items() if _supports_stats(v)}
    batches = ctx.calibration or []
    sequential = getattr(config, "sequential", True)
    cache = None if sequential else collect_input_stats(model, usable, batches, hessian=hessian)
    masks = {}
    for name, layer in progress(layers.items(), f"{config.kind} masks", unit="layers"):
        w = layer.weight.detach()
        flat = w.reshape(w.shape[0], -1)
        stats = None
        if name in usable:
            stats = (
                cache if cache is not None else collect_input_stats(model, {name: layer}, batches, hessian=hessian)
            ).get(name)
            if stats is None:  # its forward never ran on the calibration data
                ctx.record(f"{config.kind}: {name} was not called during calibration; scored by magnitude instead")
        else:
            ctx.record(f"{config.kind}: {name} is a grouped conv; scored by magnitude instead")
        mask = None
        if stats is not None and hessian:
            try:
                new, mask = sparsegpt_prune(
                    flat, stats.hessian, sparsity, n=n, m=m, blocksize=config.blocksize, damp=config.damp
                )
                with torch.no_grad():
                    layer.weight.copy_(new.reshape(w.shape))
            except torch.linalg.LinAlgError:
                ctx.record(f"{config.kind}: {name}: Hessian not positive definite; fell back to Wanda scores")
        if mask is None:
            score = flat.abs().float()
            if stats is not None:
                score = score * stats.norm.float().reshape(1, -1)
            mask = nm_mask(score, n, m) if m else _row_topk(score, sparsity)
        mask = mask.reshape(w.shape)
        if sequential:
            apply_mask_(layer, mask)  # later layers calibrate on the pruned outputs
        masks[name] = mask
    return masks


@register_transform(WandaPruning, scope="model")
def _wanda(model: nn.Module, config: WandaPruning, select: Select, ctx: Context) -> nn.Module:
    layers = adapted_layers(model, select, config, ctx)
    masks = _calibrated_masks(model, layers, ctx, config, method="wanda", sparsity=config.sparsity)
    return _apply(model, masks, layers, config, ctx)


@register_transform(SparseGPTPruning, scope="model")
def _sparsegpt(model: nn.Module, config: SparseGPTPruning, select: Select, ctx: Context) -> nn.Module:
    layers = adapted_layers(model, select, config, ctx)
    masks = _calibrated_masks(model, layers, ctx, config, method="sparsegpt", sparsity=config.sparsity)
    return _apply(model, masks, layers, config, ctx)


@register_transform(NMPruning, scope="model")
def _nm(model: nn.Module, config: NMPruning, select: Select, ctx: Context) -> nn.Module:
    layers = adapted_layers(model, select, config, ctx)
    bad = [f"{n} ({m.weight[0].numel()} inputs)" for n, m in layers.items() if m.weight[0].numel() % config.m]
    if bad and len(bad) == len(layers):
        raise ConfigError(f"{config.n}:{config.m} pruning needs input sizes divisible by {config.m}", bad)
    if bad:  # e.g. a depthwise 3x3 conv (9 inputs per output): left dense, the others are pruned
        ctx.record(
            f"{config.kind}: left {len(bad)} layer(s) dense, input size not a multiple of {config.m}: " + ", ".join(bad)
        )
        layers = {n: m for n, m in layers.items() if m.weight[0].numel() % config.m == 0}
    if config.method == "magnitude":
        masks = {n: nm_mask(magnitude_score(m.weight), config.n, config.m) for n, m in layers.items()}
    else:
        masks = _calibrated_masks(model, layers, ctx, config, method=config.method, n=config.n, m=config.m)
    return _apply(model, masks, layers, config, ctx)
