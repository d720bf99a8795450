"""FSDP2 for distillation: shard the student over the ranks when its training state does not fit one.

Data-parallel training (DDP) keeps on every rank the whole student, its gradients and AdamW's two
moment estimates: about ``4·P`` bytes for ``P`` bytes of parameters. FSDP2 (``fully_shard``, Zhao et
al. 2023, "PyTorch FSDP"; the per-parameter DTensor rewrite in PyTorch ≥ 2.4) keeps ``1/N`` of each on
each of ``N`` ranks and all-gathers one block's parameters for its forward and backward pass.

How the trainer uses it (:func:`torchslim.distillation.train_distill` with ``parallel="fsdp"``, or
``"auto"`` when :func:`resolve_parallel` finds the DDP state too large for the memory of one rank):

* :func:`shell_copy` makes a second module tree over the *same* tensors; that copy is sharded, so the
  caller's student keeps its class and hooks. Once sharded, the caller's parameters are emptied
  (:func:`release`) and after training :func:`gather_into` writes the full weights back into them.
* :func:`shard_` applies ``fully_shard`` to every block (the elements of the student's outermost
  ``nn.ModuleList`` containers), to the student, then to the root (student plus projections). The
  student being a unit of its own lets ``eval_fn`` call it directly on every rank.
* The C heap: FSDP frees and re-allocates each block's gathered parameters and gradients every step,
  and under glibc's rising mmap threshold those stay in the heap; measured, the rank's peak memory
  then grew step by step past DDP's. :func:`shard_` caps the threshold
  (:func:`~torchslim.measure.heap.cap_mmap_threshold`, for the rest of the process) so that they go.
* Checkpoints hold each rank's local shards (:func:`local_tensors`, :func:`as_dtensors_like`): writing
  them needs no collective, so a Ctrl-C, which reaches the ranks at different points of a step, still
  leaves a checkpoint. ``torch.distributed.checkpoint`` plans its writes collectively, which cannot
  run there.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))
    >>> [type(m).__name__ for m in shard_units(model)]
    ['Linear', 'Linear']
    >>> resolve_parallel("auto", model, nn.Linear(4, 2))
    ('none', '')
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim.distillation.distributed import DistInfo, broadcast_value, dist_info
from torchslim.errors import ConfigError
from torchslim.measure.heap import cap_mmap_threshold
from torchslim.measure.memlimit import available_memory, format_bytes
from torchslim.measure.memory import fp32_bytes, trainable_bytes

__all__ = [
    "PARALLEL_MODES",
    "as_dtensors_like",
    "ddp_training_bytes",
    "gather_into",
    "local_tensors",
    "optimizer_from_local",
    "release",
    "resolve_parallel",
    "shard_",
    "shard_units",
    "shell_copy",
]

PARALLEL_MODES = ("auto", "ddp", "fsdp")
# DDP's state may use this share of a rank's memory before "auto" shards it: the rest is for
# activations, the teacher's forward passes and the allocator's slack.
_FIT_SHARE = 0.5


def ddp_training_bytes(student: nn.Module) -> int:
    """Bytes a DDP rank adds for training ``student``: the memory preflight's training part
    (:mod:`torchslim.measure.memory`: gradients and two AdamW moments, ``3·P`` for ``P`` trainable
    parameter bytes, plus the best weights kept, ``F``) and DDP's gradient buckets (another ``P``)."""
    return 4 * trainable_bytes(student) + fp32_bytes(student)


def _rank_memory(info: DistInfo, device: torch.device) -> tuple[int, str] | None:
    """Memory one rank may still use: the device's free memory on CUDA, else the host's available memory
    (:func:`~torchslim.measure.memlimit.available_memory`) shared by the ranks of this host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    found = available_memory()
    if found is None:
        return None
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = f", shared by {local} ranks on this host" if local > 1 else ""
    return found.bytes // local, f"{found.source}{share}"


def resolve_parallel(
    requested: str, student: nn.Module, teacher: nn.Module, info: DistInfo | None = None
) -> tuple[str, str]:
    """How a distillation run trains across processes, and why (a message for the log, or "").

    Returns ``("none", "")`` outside a process group. Under ``torchrun``: ``"ddp"`` or ``"fsdp"`` as
    requested; ``"auto"`` picks FSDP when :func:`ddp_training_bytes` exceeds half of what one rank may
    still use (the device's free memory on CUDA, else the host's available memory divided by the ranks
    on this host; ``TORCHSLIM_MEMORY_LIMIT`` states it), and DDP otherwise. Every rank gets rank 0's
    choice.

    Raises:
        ConfigError: an unknown mode, or ``"fsdp"`` without a process group.
    """
    if requested not in PARALLEL_MODES:
        raise ConfigError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {requested!r}")
    info = info if info is not None else dist_info()
    if not info.distributed:
        if requested == "fsdp":
            raise ConfigError(
                "parallel='fsdp' shards the student over the ranks of a torchrun process group, and this "
                "process is not in one: run it under torchrun --nproc-per-node N (N >= 2)"
            )
        return "none", ""
    if requested != "auto":
        return requested, ""
    device = next(student.parameters()).device
    need, room = ddp_training_bytes(student), _rank_memory(info, device)
    choice, why = "ddp", ""
    if room is not None and need > _FIT_SHARE * room[0]:
        choice = "fsdp"
        why = (
            f"distill: training the student with DDP needs about {format_bytes(need)} per rank (gradients, "
            f"AdamW moments, best weights) and one rank has {format_bytes(room[0])} ({room[1]}): sharding it "
            f"over {info.world_size} ranks with FSDP2 (fully_shard)"
        )
    return broadcast_value((choice, why), info)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: the elements with parameters of every outermost ``nn.ModuleList``
    (a transformer's layers, a ResNet stage's blocks); none when the model has no such list."""
    units: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                units.extend(m for m in child if next(m.parameters(), None) is not None)
            else:
                walk(child)

    walk(model)
    return units


def shell_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares its parameters and buffers (no tensor is copied)."""
    memo: dict[int, Any] = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:  # noqa: BLE001 - any failure of deepcopy means the model cannot be sharded this way
        raise ConfigError(
            f"FSDP needs a copy of the student's module tree, and copy.deepcopy failed on it ({e}); "
            "train it with parallel='ddp'"
        ) from None


def shard_(root: nn.Module, student: nn.Module) -> None:
    """``fully_shard`` the student's blocks, the student, then ``root`` (which holds the student), in place.

    Every rank first takes rank 0's parameters and buffers (as DDP does), so the shards agree. Caps
    the C heap's mmap threshold (see the module docstring)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    cap_mmap_threshold()
    with torch.no_grad():
        for t in [*root.parameters(), *root.buffers()]:
            dist.broadcast(t.data, src=0)
    for block in shard_units(student):
        fully_shard(block)
    fully_shard(student)
    fully_shard(root)


def release(tensors: Iterable[torch.Tensor]) -> None:
    """Drop the storage of ``tensors`` (the caller's parameters, whose data now lives in the shards)."""
    for t in tensors:
        t.data = torch.empty(0, dtype=t.dtype, device=t.device)


def local_tensors(value: Any) -> Any:
    """``value`` (a state dict, nested) with every DTensor replaced by this rank's local shard."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.to_local()
    if isinstance(value, dict):
        return {k: local_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [local_tensors(v) for v in value]
    return value


def as_dtensors_like(saved: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """``saved`` local shards made DTensors again with the layout of the same keys in ``like``."""
    from torch.distributed.tensor import DTensor

    out: dict[str, Any] = {}
    for k, v in saved.items():
        ref = like.get(k)
        if isinstance(ref, DTensor) and isinstance(v, torch.Tensor):
            v = DTensor.from_local(
                v.to(ref.device), ref.device_mesh, ref.placements, run_check=False, shape=ref.shape, stride=ref.stride()
            )
        out[k] = v
    return out


def optimizer_from_local(saved: dict[str, Any], params: list[torch.Tensor]) -> dict[str, Any]:
    """A saved optimizer state (its moments as local shards, :func:`local_tensors`) ready for ``load_state_dict``: each parameter's tensors of
    its shape (the moments; not the scalar step count) made DTensors laid out as that parameter."""
    state = {}
    for i, entry in saved["state"].items():
        like = {k: params[int(i)] for k, v in entry.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
        state[i] = as_dtensors_like(entry, like)
    return {"state": state, "param_groups": saved["param_groups"]}


def gather_into(original: nn.Module, sharded: nn.Module) -> None:
    """Write the full tensors of ``sharded`` (all-gathered on every rank) into ``original``'s parameters
    and buffers of the same names (the module tree :func:`shell_copy` was made from).

    Buffers are not sharded and each rank updated its own (BatchNorm statistics of its batches): every
    rank takes rank 0's, so all hand back the same model."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    targets = dict(original.named_parameters(remove_duplicate=False))
    targets.update(original.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, value in sharded.state_dict().items():
            if isinstance(value, DTensor):
                full = value.full_tensor()
            else:
                full = value
                dist.broadcast(full, src=0)
            if name in targets:
                targets[name].data = full.detach().to(targets[name].dtype)
