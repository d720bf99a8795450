"""``LowRank``: factor a Linear or Conv2d layer into two thinner ones with a truncated SVD.

For ``W ∈ R^{out×in}`` with SVD ``W = U Σ Vᵀ``, the best rank-``r`` approximation in Frobenius norm
(Eckart–Young) is ``U_r Σ_r V_rᵀ``; the layer ``y = W x + b`` becomes ``y = B (A x) + b`` with
``A = Σ_r^{1/2} V_rᵀ ∈ R^{r×in}`` and ``B = U_r Σ_r^{1/2} ∈ R^{out×r}`` (Denton et al., "Exploiting
Linear Structure Within Convolutional Networks for Efficient Evaluation", NeurIPS 2014). It costs
``r·(in+out)`` parameters and MACs per token instead of ``in·out``, so a layer is only factored when
``r < in·out / (in+out)``. The rank is ``ceil(rank_ratio · min(in, out))``, or with ``energy`` the smallest
``r`` keeping that fraction of the squared singular values ``Σ_{i≤r} σ_i² ≥ energy · Σ_i σ_i²``.

A ``Conv2d(in, out, (kh, kw))`` (``groups=1``) is the same with its weight reshaped to the matrix
``W ∈ R^{out×(in·kh·kw)}`` (each row one filter): ``A`` becomes a ``Conv2d(in, r, (kh, kw))`` with the
original stride / padding / dilation and ``B`` a ``1×1`` ``Conv2d(r, out)`` carrying the bias, at
``r·(in·kh·kw + out)`` parameters and MACs per output pixel instead of ``out·in·kh·kw`` (the spatial
factorization of Jaderberg et al. 2014 is not used: it needs two ranks and is rarely smaller here).
Grouped and depthwise convolutions are left whole: their weight is already block-diagonal.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    >>> _ = compress_(m, LowRank(rank_ratio=0.25))
    >>> type(m[0]).__name__, m[0].rank, type(m[2]).__name__
    ('LowRankLinear', 16, 'Linear')
    >>> cnn = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, groups=32))
    >>> _ = compress_(cnn, LowRank(rank_ratio=0.25))
    >>> type(cnn[0]).__name__, cnn[0].rank, cnn(torch.randn(1, 16, 8, 8)).shape, type(cnn[2]).__name__
    ('LowRankConv2d', 8, torch.Size([1, 32, 6, 6]), 'Conv2d')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
import torch.nn as nn

from torchslim.core.adapters import Conv1DLinear, adapt_for_
from torchslim.core.config import Config, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.modspec import module_from_spec, register_spec_module
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.structure import op_layers, record_op, register_replay
from torchslim.core.walker import record_foreign_layers, replace_module_
from torchslim.errors import UnsafeInputError, UnsupportedModelError


class NoDenseWeightError(UnsupportedModelError, AttributeError):
    """Code outside the module read ``weight`` / ``bias`` of a factorized layer, which has only its two halves.

    An ``AttributeError`` too, so ``getattr(layer, "weight", None)`` and ``hasattr`` behave as for any
    module without a weight; uncaught, it is an :class:`~torchslim.errors.UnsupportedModelError` (exit 5)
    that names the layer type and what to do.
    """


class _FactoredLayer:
    """Mixin: reading ``weight`` / ``bias`` raises :class:`NoDenseWeightError` with a clear message."""

    def __getattr__(self, name: str):
        if name in ("weight", "bias"):
            raise NoDenseWeightError(
                f"{type(self).__name__} has no dense {name} (it is factorized into .down and .up); "
                f"something outside it read .{name} directly: exclude that layer from LowRank with select"
            )
        return super().__getattr__(name)  # type: ignore[misc]


@register_spec_module
class LowRankLinear(_FactoredLayer, nn.Module):
    """``y = up(down(x))``: a rank-``rank`` Linear from ``in_features`` to ``out_features`` (bias on ``up``).

    It has no ``weight`` / ``bias`` of its own: reading them raises :class:`NoDenseWeightError`.

    Example:
        >>> layer = LowRankLinear(8, 4, rank=2)
        >>> layer.up.weight.shape, getattr(layer, "weight", None)
        (torch.Size([4, 2]), None)
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.up.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LowRankLinear:
        """An empty (randomly initialised) layer from :meth:`torchslim_spec`'s output."""
        return cls(int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"]), bool(spec["bias"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


@register_spec_module
class LowRankConv2d(_FactoredLayer, nn.Sequential):
    """``Conv2d(in, rank, kernel, stride, padding, dilation)`` then ``Conv2d(rank, out, 1)`` (bias on the second).

    An ``nn.Sequential`` (children ``0`` = ``down``, ``1`` = ``up``), so other tools see two
    ordinary convolutions; ``rank``, ``in_channels`` and ``out_channels`` describe the pair.

    Example:
        >>> conv = LowRankConv2d(nn.Conv2d(4, 8, 3, stride=2, padding=1), rank=2)
        >>> conv.down.weight.shape, conv.up.weight.shape, conv(torch.randn(1, 4, 8, 8)).shape
        (torch.Size([2, 4, 3, 3]), torch.Size([8, 2, 1, 1]), torch.Size([1, 8, 4, 4]))
    """

    def __init__(self, like: nn.Conv2d, rank: int) -> None:
        down = nn.Conv2d(
            like.in_channels,
            rank,
            like.kernel_size,  # type: ignore[arg-type]
            stride=like.stride,  # type: ignore[arg-type]
            padding=like.padding,  # type: ignore[arg-type]
            dilation=like.dilation,  # type: ignore[arg-type]
            bias=False,
            padding_mode=like.padding_mode,
        )
        up = nn.Conv2d(rank, like.out_channels, 1, bias=like.bias is not None)
        super().__init__(down, up)
        self.in_channels, self.out_channels, self.rank = like.in_channels, like.out_channels, rank

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return _conv_spec(self.down, self.out_channels, self.up.bias is not None) | {"rank": self.rank}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LowRankConv2d:
        """An empty (randomly initialised) pair from :meth:`torchslim_spec`'s output."""
        padding = spec["padding"]
        with torch.device("meta"):  # a template for the shapes only
            like = nn.Conv2d(
                int(spec["in_channels"]),
                int(spec["out_channels"]),
                tuple(int(k) for k in spec["kernel_size"]),  # type: ignore[arg-type]
                stride=tuple(int(k) for k in spec["stride"]),  # type: ignore[arg-type]
                padding=padding if isinstance(padding, str) else tuple(int(k) for k in padding),  # type: ignore[arg-type]
                dilation=tuple(int(k) for k in spec["dilation"]),  # type: ignore[arg-type]
                bias=bool(spec["bias"]),
                padding_mode=str(spec["padding_mode"]),
            )
        return cls(like, int(spec["rank"]))

    @property
    def down(self) -> nn.Conv2d:
        return self[0]  # type: ignore[return-value]

    @property
    def up(self) -> nn.Conv2d:
        return self[1]  # type: ignore[return-value]


@register_config("low-rank")
@dataclass(frozen=True)
class LowRank(Config):
    """Truncated-SVD factorization of Linear and Conv2d layers, where it makes them smaller.

    Args:
        rank_ratio: rank as a fraction of ``min(in, out)`` (default 0.5 when ``energy`` is not given);
            for a Conv2d ``in`` is ``in_channels·kh·kw``.
        energy: keep the smallest rank whose singular values hold this fraction of ``Σ σ²`` instead.
        only_if_smaller: skip layers whose factorization would not reduce parameters and MACs.

    Raises:
        ConfigError: both or neither sensible ``rank_ratio`` / ``energy`` values.
    """

    rank_ratio: float | None = None
    energy: float | None = None
    only_if_smaller: bool = True

    def __post_init__(self) -> None:
        if self.rank_ratio is not None and self.energy is not None:
            fail(self, "energy", "give rank_ratio or energy, not both")
        if self.rank_ratio is None and self.energy is None:
            object.__setattr__(self, "rank_ratio", 0.5)
        if self.rank_ratio is not None:
            check_range(self, "rank_ratio", 0.0, 1.0, low_open=True, hint="a fraction of min(in, out), e.g. 0.5")
        if self.energy is not None:
            check_range(self, "energy", 0.0, 1.0, low_open=True, hint="a fraction of the spectrum, e.g. 0.9")

    def default_select(self) -> Select:
        return Select(types=("Linear", "Conv2d"))


def choose_rank(s: torch.Tensor, rank_ratio: float | None, energy: float | None) -> int:
    """The rank to keep for singular values ``s`` (descending).

    Example:
        >>> choose_rank(torch.tensor([3.0, 1.0, 0.0]), None, 0.9), choose_rank(torch.tensor([3.0, 1.0, 0.0]), 0.5, None)
        (1, 2)
    """
    if energy is None:
        return max(1, math.ceil(float(rank_ratio) * s.numel()))  # type: ignore[arg-type]
    power = s.double().pow(2)
    cum = power.cumsum(0) / power.sum().clamp_min(1e-30)
    return min(s.numel(), int((cum < energy - 1e-12).sum()) + 1)


def _svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(down [r, in], up [out, r])`` with ``up @ down`` the best rank-``rank`` approximation of ``w [out, in]``."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # u [out, k], s [k], vh [k, in]
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(w.dtype), (u[:, :rank] * root[None, :]).to(w.dtype)


def _conv_spec(conv: nn.Conv2d, out_channels: int, bias: bool) -> dict[str, Any]:
    """The JSON fields of a :class:`LowRankConv2d` whose ``down`` half has ``conv``'s geometry."""
    padding = conv.padding if isinstance(conv.padding, str) else list(conv.padding)
    return {
        "in_channels": conv.in_channels,
        "out_channels": out_channels,
        "kernel_size": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": padding,
        "dilation": list(conv.dilation),
        "padding_mode": conv.padding_mode,
        "bias": bias,
    }


def low_rank_spec(layer: nn.Linear | nn.Conv2d, rank: int) -> dict[str, Any]:
    """The module spec of the rank-``rank`` factorization of ``layer`` (see :mod:`torchslim.core.modspec`).

    Example:
        >>> low_rank_spec(nn.Linear(8, 4), 2)
        {'class': 'LowRankLinear', 'in_features': 8, 'out_features': 4, 'rank': 2, 'bias': True}
    """
    if isinstance(layer, nn.Conv2d):
        return {"class": "LowRankConv2d", **_conv_spec(layer, layer.out_channels, layer.bias is not None), "rank": rank}
    return {
        "class": "LowRankLinear",
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "rank": rank,
        "bias": layer.bias is not None,
    }


def _empty_factorization(layer: nn.Linear | nn.Conv2d, rank: int) -> LowRankLinear | LowRankConv2d:
    """The rank-``rank`` factorized module for ``layer``, built from its spec, on ``layer``'s device and dtype."""
    w = layer.weight
    new = module_from_spec(low_rank_spec(layer, rank))
    return new.to(device=w.device, dtype=w.dtype).train(layer.training)  # type: ignore[return-value]


def _matrix(layer: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """The layer's weight as a matrix: Linear ``[out, in]``; Conv2d ``[out, in, kh, kw] -> [out, in·kh·kw]``."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1)


def factorize(layer: nn.Linear | nn.Conv2d, rank: int) -> LowRankLinear | LowRankConv2d:
    """The rank-``rank`` :class:`LowRankLinear` / :class:`LowRankConv2d` closest to ``layer`` (SVD in float64).

    Example:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> x = torch.randn(1, 3, 6, 6)
        >>> torch.allclose(factorize(conv, 8)(x), conv(x), atol=1e-5)
        True
    """
    w = layer.weight.detach()
    down, up = _svd_factors(_matrix(layer), rank)
    if isinstance(layer, nn.Conv2d):
        down, up = down.reshape(rank, *w.shape[1:]), up[:, :, None, None]  # [r, in, kh, kw], [out, r, 1, 1]
    new = _empty_factorization(layer, rank)
    with torch.no_grad():
        new.down.weight.copy_(down)
        new.up.weight.copy_(up)
        if layer.bias is not None:
            new.up.bias.copy_(layer.bias.detach())
    return new


def _factorable(module: nn.Module) -> TypeGuard[nn.Linear | nn.Conv2d]:
    """A plain Linear, or a plain 2-D convolution without groups (grouped / depthwise stay whole)."""
    return type(module) in (nn.Linear, Conv1DLinear) or (type(module) is nn.Conv2d and module.groups == 1)


@register_transform(LowRank, scope="model")
def _low_rank(model: nn.Module, config: LowRank, select: Select, ctx: Context) -> nn.Module:
    done: dict[str, int] = {}
    skipped = grouped = 0
    # The halves of a layer factored by an earlier run stay as they are (factoring them again only adds layers).
    factored = [n for n, m in model.named_modules() if isinstance(m, (LowRankLinear, LowRankConv2d))]
    # GPT-2 Conv1D -> Linear; nn.MultiheadAttention / TransformerEncoderLayer read Linear weights: split them.
    select = adapt_for_(model, select, kind=config.kind, ctx=ctx, swaps=True)
    record_foreign_layers(model, config.kind, ctx)
    for name, module in list(select.modules(model)):
        if not name or any(name.startswith(p + ".") for p in factored):
            continue
        if type(module) is nn.Conv2d and module.groups != 1:
            grouped += 1
            continue
        if not _factorable(module):
            continue
        n_out, n_in = _matrix(module).shape  # Conv2d: n_in = in_channels·kh·kw
        s = torch.linalg.svdvals(_matrix(module).double())
        rank = choose_rank(s, config.rank_ratio, config.energy)
        if config.only_if_smaller and rank * (n_in + n_out) >= n_in * n_out:
            skipped += 1
            continue
        replace_module_(model, name, factorize(module, rank))
        done[name] = rank
    if done:
        record_op(model, "low-rank", {"layers": done})
    ctx.record(
        f"low-rank: factored {len(done)} Linear/Conv2d layer(s); {skipped} left whole (no saving at that rank)"
        + (f", {grouped} grouped/depthwise conv(s) skipped" if grouped else "")
    )
    return model


@register_replay("low-rank")
def _replay_low_rank(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    for name, layer, rank in op_layers(model, "low-rank", data):
        # The op stores only path -> rank; the fresh model's layer type says Linear or Conv2d.
        if not (_factorable(layer) and isinstance(rank, int) and 0 < rank <= min(_matrix(layer).shape)):
            raise UnsafeInputError(f"low-rank op does not fit {name!r} (rank {rank!r})")
        # Built empty from its spec (no SVD of the fresh weights): the load that follows fills it.
        replace_module_(model, name, _empty_factorization(layer, rank))
    return model
