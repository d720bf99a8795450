"""Calibration split over processes (``torchrun``): each rank runs its share of the batches, the
statistics are reduced, and every rank ends with the single-process statistics.

Inside :func:`distributed_calibration` (``torchslim compress`` enters it by itself under torchrun),
:func:`~torchslim.calibration.collect_input_stats` (GPTQ, AWQ, SparseGPT and Wanda statistics) and
:func:`~torchslim.calibration.capture_inputs` (SmoothQuant, the SQNR guard) run batch ``i`` on rank
``i mod N`` and then:

- sums (``Σ x²``, ``Σ X Xᵀ``) are compensated sums (:mod:`~torchslim.calibration.compensated`),
  gathered and merged in rank order on every rank, so the Hessians equal the single-process ones to
  the last float64 bit unless a sum lies within ``~n·2⁻¹⁰⁶`` of a rounding midpoint; token counts
  are integers;
- captured input rows are gathered and put back in batch order, so they are the single-process rows.

Every rank then computes the same weights; only rank 0 writes. The process group is gloo on CPU and
NCCL on GPU (:func:`init_from_env`); the batches themselves must be the same list on every rank.

Example:
    >>> shard_of(list(range(5)))  # no group: the whole list
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from torchslim.calibration.compensated import CompensatedSum

__all__ = [
    "Shard",
    "all_gather_objects",
    "current_shard",
    "distributed_calibration",
    "init_from_env",
    "interleave",
    "merge_sums",
    "reduce_count",
    "shard_of",
    "torchrun_calibration",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a split calibration: ``rank`` of ``world_size`` (in ``group``)."""

    rank: int
    world_size: int
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SHARD: contextvars.ContextVar[Shard | None] = contextvars.ContextVar("torchslim_calibration_shard", default=None)


def init_from_env() -> Shard:
    """Join the process group torchrun's environment describes (gloo on CPU, NCCL on GPU), if any.

    Returns the resulting :class:`Shard` (rank 0 of 1 when ``WORLD_SIZE`` is unset or 1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard(0, 1)


@contextlib.contextmanager
def distributed_calibration(group: Any = None) -> Iterator[Shard]:
    """Within this block, calibration passes split their batches over ``group`` and reduce the statistics.

    Every rank must run the same code on the same calibration list (the collectives pair up in
    order). Outside a process group (or with one process) it changes nothing.
    """
    if dist.is_available() and dist.is_initialized():
        shard = Shard(dist.get_rank(group), dist.get_world_size(group), group)
    else:
        shard = Shard(0, 1)
    token = _SHARD.set(shard if shard.world_size > 1 else None)
    try:
        yield shard
    finally:
        _SHARD.reset(token)


@contextlib.contextmanager
def torchrun_calibration() -> Iterator[Shard]:
    """:func:`init_from_env` and :func:`distributed_calibration` for one command; leaves the group after.

    On a clean exit every rank waits for the others to finish before the group is destroyed: a rank
    tearing gloo down while another is inside a collective makes that one abort. After an error the
    group is destroyed at once (torchrun then stops the other ranks). A group that existed before is
    kept.
    """
    existed = dist.is_available() and dist.is_initialized()
    init_from_env()
    clean = False
    try:
        with distributed_calibration() as active:
            yield active
        clean = True
    finally:
        if not existed and dist.is_available() and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()


def current_shard() -> Shard | None:
    """The active split (inside :func:`distributed_calibration` with 2+ processes), else ``None``."""
    return _SHARD.get()


def shard_of(batches: Sequence[T]) -> list[T]:
    """This rank's batches: ``batches[rank::world_size]`` (the whole list when not split)."""
    shard = current_shard()
    return list(batches) if shard is None else list(batches[shard.rank :: shard.world_size])


def interleave(per_rank: Sequence[Sequence[T]]) -> list[T]:
    """Undo :func:`shard_of`: rank ``r``'s ``k``-th item was batch ``k·N + r``.

    Example:
        >>> interleave([[0, 2, 4], [1, 3]])
        [0, 1, 2, 3, 4]
    """
    out: list[T] = []
    for k in range(max((len(p) for p in per_rank), default=0)):
        out.extend(p[k] for p in per_rank if k < len(p))
    return out


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not split."""
    shard = current_shard()
    if shard is None:
        return [obj]
    out: list[Any] = [None] * shard.world_size
    dist.all_gather_object(out, obj, group=shard.group)
    return out


def merge_sums(acc: CompensatedSum, shape: tuple[int, ...], device: torch.device | str = "cpu") -> CompensatedSum:
    """The sum over all ranks of each rank's ``acc``, merged in rank order (the same bits on every rank).

    A rank that added nothing contributes zeros of ``shape`` on ``device`` (the collective's device:
    CPU for gloo, the rank's GPU for NCCL). One all-gather of the ``(hi, lo)`` pair: briefly
    ``2 · world_size`` tensors of the sum's size.
    """
    shard = current_shard()
    if shard is None:
        return acc
    if acc.hi is None:
        pair = torch.zeros((2, *shape), dtype=torch.float64, device=device)
    else:
        pair = torch.stack([acc.hi, acc.lo]).to(device)
    gathered = [torch.empty_like(pair) for _ in range(shard.world_size)]
    dist.all_gather(gathered, pair.contiguous(), group=shard.group)
    total = CompensatedSum()
    for part in gathered:
        total.merge(CompensatedSum(part[0], part[1]))
    return total


def reduce_count(n: int) -> int:
    """The sum of an integer count over all ranks."""
    shard = current_shard()
    if shard is None:
        return n
    return sum(all_gather_objects(int(n)))
