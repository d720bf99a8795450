"""Input statistics of Linear/Conv layers over calibration batches (Wanda norms, SparseGPT Hessians).

Conv inputs are unfolded into patches (``[in·kh·kw, tokens]``) so the same formulas apply to the
flattened ``[out, in·kh·kw]`` weight.

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> stats = collect_input_stats(m, {"0": m[0]}, [(torch.ones(4, 3),)], hessian=True)
    >>> stats["0"].norm.tolist(), stats["0"].count
    ([2.0, 2.0, 2.0], 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.calibration.compensated import CompensatedSum
from torchslim.calibration.distributed import all_gather_objects, current_shard, merge_sums, reduce_count, shard_of
from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.packed import SymmetricPacked, packed_size, row_offsets
from torchslim.calibration.passes import StopForward, run_calibration
from torchslim.core.batches import InputFn
from torchslim.errors import ConfigError


@dataclass
class InputStats:
    """Running sums for one layer: per-input squared sums (→ L2 norms) and optionally X Xᵀ.

    ``xxt`` holds the upper triangle of X Xᵀ, packed (:class:`~torchslim.calibration.packed.SymmetricPacked`:
    half of a ``K × K`` float64 matrix, which is 600 MB at K = 8704). :attr:`hessian` scales it in
    place into the Hessian and unpacks it into the full matrix (kept instead of the packed one);
    :meth:`packed_hessian` scales it and hands it over packed.
    """

    sq_sum: torch.Tensor
    xxt: torch.Tensor | None
    count: int = 0
    _scaled: bool = field(default=False, repr=False)
    _full: torch.Tensor | None = field(default=None, repr=False)

    @property
    def norm(self) -> torch.Tensor:
        return self.sq_sum.sqrt()

    def _scaled_xxt(self) -> torch.Tensor:
        if self.xxt is None:
            raise ValueError("Hessian was not collected, or was handed over by packed_hessian()")
        if not self._scaled:
            self.xxt.mul_(2.0).div_(max(1, self.count))
            self._scaled = True
        return self.xxt

    def packed_hessian(self) -> SymmetricPacked:
        """``2/T · X Xᵀ`` (float64) as its packed upper triangle, entry for entry the bits of :attr:`hessian`.

        The stats hand the packed sums over (they no longer hold them: a consumer that releases them
        frees their memory); a full Hessian read earlier is packed again.
        """
        if self._full is not None:
            return SymmetricPacked.from_full(self._full)
        packed = SymmetricPacked(self._scaled_xxt(), self.sq_sum.shape[0])
        self.xxt = None
        return packed

    @property
    def hessian(self) -> torch.Tensor:
        """``2/T · X Xᵀ`` (float64, ``K × K``; the same bits as ``2.0 * xxt / T``)."""
        if self._full is None:
            packed = SymmetricPacked(self._scaled_xxt(), self.sq_sum.shape[0])
            self.xxt = None
            self._full = packed.full()
        return self._full


_BAND = 1 << 18  # elements of X Xᵀ computed per band of rows (2 MiB of float64)


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``[features, tokens]`` matching the flattened weight's columns."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # [B, in*k*k, L]
        return cols.permute(1, 0, 2).reshape(cols.shape[1], -1)
    if isinstance(module, nn.Conv1d):
        cols = F.unfold(
            x.unsqueeze(-1),
            (module.kernel_size[0], 1),
            (module.dilation[0], 1),
            (module.padding[0], 0) if isinstance(module.padding, tuple) else module.padding,
            (module.stride[0], 1),
        )
        return cols.permute(1, 0, 2).reshape(cols.shape[1], -1)
    raise TypeError(f"no input statistics for {type(module).__name__}")


def collect_input_stats(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Sequence[Any],
    *,
    hessian: bool = False,
    input_fn: InputFn | None = None,
) -> dict[str, InputStats]:
    """Run ``batches`` through ``model`` and accumulate each layer's input statistics.

    A batch is any layout :func:`torchslim.core.batches.call_model` reads (targets are left out). The
    sums are compensated (:class:`~torchslim.calibration.compensated.CompensatedSum`); inside
    :func:`~torchslim.calibration.distributed.distributed_calibration` each rank runs its share of the
    batches and the sums of all ranks are merged, so every rank gets the one-process statistics.

    Raises:
        ConfigError: no calibration batches, or non-finite calibration data (naming the layer).
    """
    if not batches:
        raise ConfigError("this pruning method needs calibration data: give Context(calibration=[...])")
    sums: dict[str, _Sums] = {}
    stop_early = len(layers) == 1

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = layer_inputs(mod, args[0].detach()).double()
            if not bool(torch.isfinite(x).all()):
                raise ConfigError(f"calibration inputs to layer {name!r} contain NaN or Inf")
            acc = sums.setdefault(name, _Sums(hessian))
            acc.sq_sum.add((x * x).sum(dim=1))
            if acc.xxt is not None:
                _add_upper_triangle(acc.xxt, x)
            acc.count += x.shape[1]
            if stop_early:  # the only hooked layer has seen its input: the rest of the forward is waste
                raise StopForward

        return fn

    with forward_hooks(((module, hook(name)) for name, module in layers.items()), pre=True):
        run_calibration(model, shard_of(batches), input_fn)
    if current_shard() is not None:
        sums = _reduce(sums, layers, hessian)
    out = {}
    for name in list(sums):  # each layer's pair of sums freed as soon as it is rounded
        acc = sums.pop(name)
        out[name] = InputStats(acc.sq_sum.take(), acc.xxt.take() if acc.xxt is not None else None, acc.count)
    return out


def _add_upper_triangle(acc: CompensatedSum, x: torch.Tensor) -> None:
    """Add the packed upper triangle of ``x xᵀ`` (``x``: ``[K, T]`` float64) to ``acc``, a band of rows at a time.

    Band ``[s, e)`` is ``x[s:e] @ x[s:]ᵀ`` (only the columns from ``s`` on: half the products of the
    whole matrix); its entries on and above the diagonal are, row by row, the packed entries
    ``row_offsets(s) … row_offsets(e)``. No ``K × K`` temporary, and no lower triangle stored.
    """
    k = x.shape[0]
    rows = max(1, _BAND // k)
    for start in range(0, k, rows):
        end = min(start + rows, k)
        band = x[start:end] @ x[start:].T
        upper = torch.ones(band.shape, dtype=torch.bool).triu_()
        offset = int(row_offsets(torch.tensor(start), k))
        acc.add_rows(offset, band.masked_select(upper), (packed_size(k),))


@dataclass
class _Sums:
    """One layer's running sums while the batches go through (compensated, so order does not matter)."""

    hessian: bool
    sq_sum: CompensatedSum = field(default_factory=CompensatedSum)
    xxt: CompensatedSum | None = None
    count: int = 0

    def __post_init__(self) -> None:
        if self.hessian and self.xxt is None:
            self.xxt = CompensatedSum()


def _reduce(sums: dict[str, _Sums], layers: dict[str, nn.Module], hessian: bool) -> dict[str, _Sums]:
    """The sums over every rank, for each layer some rank saw (in ``layers`` order on every rank)."""
    features: dict[str, int] = {}
    for part in all_gather_objects({n: acc.sq_sum.hi.shape[0] for n, acc in sums.items() if acc.sq_sum.hi is not None}):
        features.update(part)
    out = {}
    for name, module in layers.items():
        if name not in features:  # no rank's batches called it
            continue
        f = features[name]
        device = next(module.parameters()).device
        local = sums.get(name) or _Sums(hessian)
        total = _Sums(hessian)
        total.sq_sum = merge_sums(local.sq_sum, (f,), device)
        if local.xxt is not None:
            total.xxt = merge_sums(local.xxt, (packed_size(f),), device)
        total.count = reduce_count(local.count)
        out[name] = total
    return out
