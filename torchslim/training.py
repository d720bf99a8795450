"""A small, generic supervised training loop shared by workloads, fine-tuning and distillation.

Example:
    >>> import torch, torch.nn as nn
    >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    >>> model = fit_(nn.Linear(4, 2), lambda: [(x, y)], epochs=2, progress=False)
    >>> model.training
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.batches import call_model, split_inputs_target
from torchslim.core.progress import progress as progress_task
from torchslim.core.sources import epoch_source
from torchslim.errors import ConfigError

LossFn = Callable[[nn.Module, Any, Any], torch.Tensor]

__all__ = ["LossFn", "cross_entropy_loss", "fit_", "warmup_cosine"]


def cross_entropy_loss(model: nn.Module, inputs: Any, target: torch.Tensor) -> torch.Tensor:
    """Default loss: cross-entropy of ``model(inputs)`` (logits ``[B, C]``) against class ids ``[B]``.

    ``inputs`` is called through :func:`torchslim.core.batches.call_model` (a tuple/list is unpacked as
    positional arguments, a dict as keyword arguments). A Hugging Face output's ``logits`` (or the
    first tensor of a tuple output) are the logits.

    Example:
        >>> import torch, torch.nn as nn
        >>> float(cross_entropy_loss(nn.Identity(), torch.zeros(2, 3), torch.tensor([0, 1]))) > 0
        True
    """
    if target is None:
        raise ConfigError(
            "training batches need a target for cross-entropy: (inputs, target) or a dict with a 'labels' key"
        )
    return F.cross_entropy(_logits(call_model(model, inputs)), target)


def _logits(out: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, a ``.logits`` / ``["logits"]`` field, or a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(f"cannot find logits in the model output ({type(out).__name__}); give a loss_fn")
    return logits


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Example:
        >>> warmup_cosine(0, 100, 10), warmup_cosine(10, 100, 10)
        (0.1, 1.0)
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def first_epoch(train_data: Callable[[], Iterable[Any]]) -> tuple[Iterable[Any] | None, int]:
    """The first epoch's iterable (None if counting consumed it) and the number of batches per epoch."""
    # The schedule needs the step count up front. A sized iterable tells us for free and is reused
    # as epoch 1, so a source that reshuffles per call sees exactly one call per epoch; otherwise
    # one extra pass over the (callable-generated, hence repeatable) data counts the batches.
    data = train_data()
    try:
        return data, len(data)  # type: ignore[arg-type]
    except TypeError:
        return None, sum(1 for _ in data)


def fit_(
    model: nn.Module,
    train_data: Callable[[], Iterable[Any]] | Iterable[Any],
    *,
    epochs: int,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    desc: str = "training",
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place with AdamW, warm-up + cosine schedule and gradient clipping at 1.0.

    The loop is deterministic given ``seed`` and a deterministic ``train_data`` (shuffling is the
    data callable's job: it should use its own seeded generator). The model is in train mode while
    training and left in eval mode.

    Args:
        model: the module to train; its parameters are updated in place.
        train_data: a callable returning a fresh iterable of batches, called once per epoch (plus
            once more to count batches if the iterable has no ``len``), or a ``DataLoader`` / list
            iterated anew every epoch. A batch is ``(inputs, target)``, ``(*positional inputs,
            target)`` or a dict whose ``labels`` key is the target
            (:func:`torchslim.core.batches.split_inputs_target`); ``loss_fn`` gets its inputs and target.
        epochs: number of passes over ``train_data()``; must be ≥ 1.
        lr: peak learning rate, reached after a linear warm-up over ~5% of the steps.
        weight_decay: AdamW decoupled weight decay.
        loss_fn: ``loss_fn(model, inputs, target) -> scalar loss``; defaults to
            :func:`cross_entropy_loss`. Distillation passes a closure that also runs a teacher.
        seed: seeds torch's RNG (dropout, lazily built parts) inside a forked RNG state, so the
            caller's global RNG is left as it was.
        desc: label of the progress bar.
        progress: report progress on stderr (:mod:`torchslim.core.progress`: a bar on a terminal, a
            plain line at a fixed interval elsewhere).

    Returns:
        The same ``model``, trained, in eval mode.

    Raises:
        ValueError: if ``epochs`` < 1 or ``train_data`` yields no batch.

    Example:
        >>> import torch, torch.nn as nn
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> m = fit_(nn.Linear(4, 3), lambda: [(x, y)], epochs=5, progress=False)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    loss_fn = loss_fn or cross_entropy_loss
    train_data = epoch_source(train_data)
    first, steps_per_epoch = first_epoch(train_data)
    if steps_per_epoch == 0:
        raise ValueError("train_data() yielded no batches")
    total = epochs * steps_per_epoch
    warmup = max(1, round(0.05 * total))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    # Seed a forked RNG: the run is reproducible without resetting the caller's global RNG state.
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with (
        torch.random.fork_rng(devices=cuda),
        progress_task(total, desc, unit="steps", enabled=progress) as bar,
    ):
        torch.manual_seed(seed)
        model.train()
        running: float | None = None
        for epoch in range(1, epochs + 1):
            data = first if (epoch == 1 and first is not None) else train_data()
            for batch in data:
                inputs, target = split_inputs_target(batch)
                loss = loss_fn(model, inputs, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                # Exponential moving average: a readable loss without a sync-heavy full mean.
                value = float(loss.detach())
                running = value if running is None else 0.9 * running + 0.1 * value
                bar.advance(status=f"epoch {epoch}/{epochs}  loss {running:.4f}")
    model.eval()
    return model
