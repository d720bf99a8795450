"""``LowRank``: factor a Linear layer into two thinner ones with a truncated SVD.

For ``W ∈ R^{out×in}`` with SVD ``W = U Σ Vᵀ``, the best rank-``r`` approximation in Frobenius norm
(Eckart–Young) is ``U_r Σ_r V_rᵀ``; the layer ``y = W x + b`` becomes ``y = B (A x) + b`` with
``A = Σ_r^{1/2} V_rᵀ ∈ R^{r×in}`` and ``B = U_r Σ_r^{1/2} ∈ R^{out×r}`` (Denton et al., "Exploiting
Linear Structure Within Convolutional Networks for Efficient Evaluation", NeurIPS 2014). It costs
``r·(in+out)`` parameters and MACs per token instead of ``in·out``, so a layer is only factored when
``r < in·out / (in+out)``. The rank is ``ceil(rank_ratio · min(in, out))``, or with ``energy`` the smallest
``r`` keeping that fraction of the squared singular values ``Σ_{i≤r} σ_i² ≥ energy · Σ_i σ_i²``.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    >>> _ = compress_(m, LowRank(rank_ratio=0.25))
    >>> type(m[0]).__name__, m[0].rank, type(m[2]).__name__
    ('LowRankLinear', 16, 'Linear')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.config import Config, _fail, check_range, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.errors import UnsafeInputError


class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a rank-``rank`` Linear from ``in_features`` to ``out_features`` (bias on ``up``).

    Example:
        >>> LowRankLinear(8, 4, rank=2).up.weight.shape
        torch.Size([4, 2])
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


@register_config("low-rank")
@dataclass(frozen=True)
class LowRank(Config):
    """Truncated-SVD factorization of Linear layers, where it makes them smaller.

    Args:
        rank_ratio: rank as a fraction of ``min(in, out)`` (default 0.5 when ``energy`` is not given).
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
            _fail(self, "energy", "give rank_ratio or energy, not both")
        if self.rank_ratio is None and self.energy is None:
            object.__setattr__(self, "rank_ratio", 0.5)
        if self.rank_ratio is not None:
            check_range(self, "rank_ratio", 0.0, 1.0, low_open=True, hint="a fraction of min(in, out), e.g. 0.5")
        if self.energy is not None:
            check_range(self, "energy", 0.0, 1.0, low_open=True, hint="a fraction of the spectrum, e.g. 0.9")

    def default_select(self) -> Select:
        return Select(types=("Linear",))


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


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The rank-``rank`` :class:`LowRankLinear` closest to ``linear`` (SVD in float64, then cast back)."""
    w = linear.weight.detach()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # u [out, k], s [k], vh [k, in]
    root = s[:rank].sqrt()
    new = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
    new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.down.weight.copy_((root[:, None] * vh[:rank]).to(w.dtype))  # [r, in]
        new.up.weight.copy_((u[:, :rank] * root[None, :]).to(w.dtype))  # [out, r]
        if linear.bias is not None:
            new.up.bias.copy_(linear.bias.detach())
    new.train(linear.training)
    return new


@register_transform(LowRank, scope="model")
def _low_rank(model: nn.Module, config: LowRank, select: Select, ctx: Context) -> nn.Module:
    done: dict[str, int] = {}
    skipped = 0
    for name, module in list(select.modules(model)):
        if type(module) is not nn.Linear or not name:
            continue
        n_in, n_out = module.in_features, module.out_features
        s = torch.linalg.svdvals(module.weight.detach().double())
        rank = choose_rank(s, config.rank_ratio, config.energy)
        if config.only_if_smaller and rank * (n_in + n_out) >= n_in * n_out:
            skipped += 1
            continue
        replace_module_(model, name, factorize(module, rank))
        done[name] = rank
    if done:
        record_op(model, "low-rank", {"layers": done})
    ctx.record(f"low-rank: factored {len(done)} Linear layer(s); {skipped} left whole (no saving at that rank)")
    return model


@register_replay("low-rank")
def _replay_low_rank(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict):
        raise UnsafeInputError("malformed low-rank structure op")
    for name, rank in layers.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise UnsafeInputError(f"low-rank op names {name!r}, not in this model") from None
        if type(linear) is not nn.Linear or not isinstance(rank, int) or not 0 < rank <= min(linear.weight.shape):
            raise UnsafeInputError(f"low-rank op does not fit {name!r} (rank {rank!r})")
        replace_module_(model, name, factorize(linear, rank))  # weights are overwritten by the load that follows
    return model
