"""The little DDP plumbing distillation needs: process-group set-up from ``torchrun``'s environment,
collectives for logging and early stopping, and splitting a batch across processes.

``torchrun --nproc_per_node N -m torchslim distill ...`` sets ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` turns them into a process group (gloo on
CPU, NCCL on GPU). Several machines work the same way through torchrun's rendezvous.

Example:
    >>> info = dist_info()
    >>> (info.rank, info.world_size, info.is_main)
    (0, 1, True)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from torchslim.core.batches import ModelInputs

__all__ = ["DistInfo", "all_mean", "broadcast_value", "dist_info", "init_from_env", "shard_batch"]


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (``0`` and ``1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The current process group's rank and size, or a single process when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.

    Returns:
        This process's :class:`DistInfo` (a single process when ``WORLD_SIZE`` is unset or 1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist_info()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist_info()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over all processes (``value`` itself in a single process)."""
    if not info.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def broadcast_value(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every process (a picklable object such as a metric dict or a flag)."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_batch(batch: Any, info: DistInfo) -> Any:
    """This process's share of a batch: the ``rank``-th of ``world_size`` chunks along dim 0 of every tensor.

    Used when the data is a callable of ready-made batches (every process iterates the same seeded
    batches and keeps its chunk, so the global batch is the single-process one). Nested tuples, lists,
    mappings (made dicts) and :class:`~torchslim.core.batches.ModelInputs` are split leaf by leaf;
    non-tensors are kept whole.

    Example:
        >>> import torch
        >>> x = torch.arange(4)
        >>> shard_batch((x, {"m": x}), DistInfo(rank=1, world_size=2))
        (tensor([2, 3]), {'m': tensor([2, 3])})
    """
    if not info.distributed:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(info.world_size, dim=0)[info.rank] if batch.dim() > 0 else batch
    if isinstance(batch, ModelInputs):
        return ModelInputs(shard_batch(batch.args, info), shard_batch(batch.kwargs, info))
    if isinstance(batch, tuple):
        return tuple(shard_batch(b, info) for b in batch)
    if isinstance(batch, list):
        return [shard_batch(b, info) for b in batch]
    if isinstance(batch, Mapping):
        return {k: shard_batch(v, info) for k, v in batch.items()}
    return batch
