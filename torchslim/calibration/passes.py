"""The calibration pass: run calibration batches through a model, and capture what named layers see.

Shared by every technique that looks at activations (static int8 observers, SmoothQuant, activation
channel pruning, layer dropping, QAT's observer warm-up).

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> capture_inputs(m, ["0"], [torch.ones(4, 3)], kind="demo")["0"].shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchslim.calibration.distributed import all_gather_objects, current_shard, interleave, shard_of
from torchslim.calibration.hooks import forward_hooks
from torchslim.core.batches import InputFn, call_model
from torchslim.core.progress import progress
from torchslim.errors import ConfigError

__all__ = ["StopForward", "capture_inputs", "run_calibration"]


class StopForward(Exception):
    """Raised by a hook once it has seen what it needs: :func:`run_calibration` ends that batch's forward there."""


def run_calibration(model: nn.Module, batches: Sequence[Any], input_fn: InputFn | None = None) -> None:
    """Run every calibration batch through ``model`` in eval mode without grad.

    A batch is any layout :func:`torchslim.core.batches.call_model` reads (a tensor, positional
    inputs, ``(inputs, target)``, a dict of keyword inputs); targets are left out of the call. A hook
    raising :class:`StopForward` skips the rest of that batch's forward.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches, "calibration", unit="batches"):
                try:
                    call_model(model, batch, input_fn)
                except StopForward:
                    pass
    finally:
        model.train(was_training)


def capture_inputs(
    model: nn.Module,
    names: Sequence[str],
    calibration: Sequence[Any] | None,
    kind: str,
    max_rows: int = 4096,
    input_fn: InputFn | None = None,
) -> dict[str, torch.Tensor]:
    """The input rows ``[M, K]`` (float32, at most ``max_rows``, evenly spaced) that each named Linear sees.

    Inside :func:`~torchslim.calibration.distributed.distributed_calibration` each rank runs its share
    of the batches and the rows are gathered back in batch order: every rank gets the one-process rows.

    Raises:
        ConfigError: no calibration data, or NaN/Inf reaching a layer (the message names the layer).
    """
    if not calibration:
        raise ConfigError(f"{kind}: needs calibration data; pass ctx=Context(calibration=[batch, ...])")
    mine = shard_of(calibration)
    # rows[name][k]: what the layer saw during this rank's k-th batch (a layer may be called 0+ times per batch)
    rows: dict[str, list[list[torch.Tensor]]] = {n: [[] for _ in mine] for n in names}
    batch = [0]

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            if not torch.isfinite(x).all():
                raise ConfigError(f"{kind}: calibration data reaching layer {name!r} contains NaN or Inf values")
            rows[name][batch[0]].append(x.reshape(-1, x.shape[-1]).float())

        return fn

    def numbered():  # tells the hooks which batch is running
        for k, b in enumerate(mine):
            batch[0] = k
            yield b

    with forward_hooks(((model.get_submodule(n), hook(n)) for n in names), pre=True):
        run_calibration(model, _Sized(numbered(), len(mine)), input_fn)
    out = {}
    for n in names:
        per_batch = rows.pop(n)
        if current_shard() is not None:  # every rank's batches, back in the single-process order
            per_batch = interleave([[[t.cpu() for t in b] for b in part] for part in all_gather_objects(per_batch)])
        flat = [t for b in per_batch for t in b]
        if not flat:
            raise ConfigError(f"{kind}: layer {n!r} was never called by the calibration data")
        x = torch.cat(flat)
        if x.shape[0] > max_rows:  # deterministic subsample: evenly spaced rows
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).round().long()]
        out[n] = x
    return out


class _Sized:
    """An iterable with a known length (for the progress bar) over a generator."""

    def __init__(self, items: Iterator[Any], n: int) -> None:
        self.items, self.n = items, n

    def __iter__(self) -> Iterator[Any]:
        return self.items

    def __len__(self) -> int:
        return self.n
