"""``LayerDropping``: remove whole transformer blocks from the ``nn.ModuleList`` that holds them.

Which blocks go:

- ``every_k``: every k-th block (blocks k-1, 2k-1, ...), the simplest strategy studied by Sajjad et al.,
  "On the Effect of Dropping Layers of Pre-trained Transformer Models" (Computer Speech & Language 2023);
- ``indices``: the listed blocks;
- ``least_important``: the ``n`` blocks with the lowest *Block Influence* on calibration data
  (Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect", 2024):
  ``BI_i = 1 − E_tokens[cos(h_i, h_{i+1})]``, where ``h_i`` / ``h_{i+1}`` are the hidden states entering
  and leaving block ``i``; a block that barely rotates its input can go. With ``criterion="output"``
  the blocks are instead chosen greedily, one at a time, as the block whose skipping (together with
  those already chosen) moves the model's output least, ``E[1 − cos(f(x), f_{−S}(x))]`` — ``n·L``
  forward passes instead of one, but it sees how blocks interact.

The block list is found automatically (the longest ``nn.ModuleList`` of identical blocks: Hugging Face
``encoder.layer`` / ``layers`` / ``h``, ``nn.TransformerEncoder.layers``, ...) or named with
``container``. Counters that must follow the new depth (``config.num_hidden_layers``, ``num_layers``)
are updated. The op is recorded, so a fresh model replays it before the weights are loaded.

Example:
    >>> import torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Sequential(nn.ModuleList([nn.Linear(4, 4) for _ in range(6)]))
    >>> _ = compress_(m, LayerDropping(every_k=2))
    >>> len(m[0])
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import run_calibration
from torchslim.core.batches import call_model
from torchslim.core.config import Config, check_positive_int, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.search import Count, searchable
from torchslim.core.select import Select
from torchslim.core.structure import record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.errors import ConfigError, UnsafeInputError, UnsupportedModelError


@register_config("layer-dropping")
@dataclass(frozen=True)
class LayerDropping(Config):
    """Drop transformer blocks: give exactly one of ``every_k``, ``indices`` or ``least_important``.

    Args:
        every_k: drop blocks k-1, 2k-1, ... (k ≥ 2).
        indices: drop these block indices.
        least_important: drop this many blocks with the lowest Block Influence (needs example inputs
            or calibration batches).
        container: qualified name of the block ``nn.ModuleList``; default: found automatically.
        criterion: for ``least_important``: ``"block-influence"`` (ShortGPT) or ``"output"`` (greedy,
            by the change of the model's output).

    Raises:
        ConfigError: not exactly one strategy, or it would drop every block.
        UnsupportedModelError: no block list found.
    """

    every_k: int | None = None
    indices: tuple[int, ...] = ()
    least_important: int | None = searchable(None, Count(0, name="drop_layers"))
    container: str | None = None
    criterion: Literal["block-influence", "output"] = "block-influence"

    def __post_init__(self) -> None:
        given = [self.every_k is not None, bool(self.indices), self.least_important is not None]
        if sum(given) != 1:
            fail(self, "every_k", "give exactly one of every_k, indices or least_important")
        if self.every_k is not None:
            check_positive_int(self, "every_k")
            if self.every_k < 2:
                fail(self, "every_k", "must be >= 2 (every_k=1 would drop every block)")
        if self.least_important is not None:
            check_positive_int(self, "least_important")
        object.__setattr__(self, "indices", tuple(self.indices))
        if any(not isinstance(i, int) or i < 0 for i in self.indices):
            fail(self, "indices", f"must be block indices >= 0, got {self.indices!r}")


def find_blocks(model: nn.Module, container: str | None = None) -> tuple[str, nn.ModuleList]:
    """``(path, list)`` of the transformer block list: the named one, or the longest ModuleList of one class.

    Example:
        >>> import torch.nn as nn
        >>> find_blocks(nn.Sequential(nn.ModuleList([nn.ReLU(), nn.ReLU()])))[0]
        '0'
    """
    if container is not None:
        try:
            found = model.get_submodule(container)
        except AttributeError:
            found = None
        if not isinstance(found, nn.ModuleList):
            raise UnsupportedModelError(f"layer-dropping: {container!r} is not an nn.ModuleList in this model")
        return container, found
    best = longest_block_list(model)
    if best is None:
        raise UnsupportedModelError(
            "layer-dropping: no nn.ModuleList of identical blocks found; name it with container"
        )
    return best


def longest_block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, list)`` of the longest ``nn.ModuleList`` (at least 2 entries) whose entries share one class
    (the first such list on a tie), or ``None``: the generic finder of a model's transformer blocks.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Module()
        >>> m.body = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
        >>> m.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
        >>> longest_block_list(m)[0], longest_block_list(nn.Linear(2, 2))
        ('body', None)
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(b) for b in module}) == 1:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    return best


def _hidden(value: Any) -> torch.Tensor | None:
    """The hidden-state tensor of a block's input or output (first tensor of a tuple)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


@torch.no_grad()
def block_influence(model: nn.Module, blocks: nn.ModuleList, batches: list[Any]) -> list[float]:
    """ShortGPT's Block Influence ``1 − mean cos(h_in, h_out)`` of every block over ``batches``.

    Example:
        >>> import torch, torch.nn as nn
        >>> blocks = nn.ModuleList([nn.Identity(), nn.Linear(4, 4)])
        >>> m = nn.Sequential(*blocks)
        >>> bi = block_influence(m, blocks, [(torch.randn(3, 4),)])
        >>> bi[0] < 1e-6 < bi[1]
        True
    """
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)

    def hook(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            h_in = _hidden(args) if args else _hidden(kwargs.get("hidden_states"))
            h_out = _hidden(out)
            if h_in is None or h_out is None or h_in.shape != h_out.shape:
                return
            cos = F.cosine_similarity(h_in.flatten(0, -2).float(), h_out.flatten(0, -2).float(), dim=-1)
            sums[i] += float((1.0 - cos).sum())
            counts[i] += cos.numel()

        return fn

    with forward_hooks(((b, hook(i)) for i, b in enumerate(blocks)), with_kwargs=True):
        run_calibration(model, batches)
    if not all(counts):
        raise UnsupportedModelError("layer-dropping: could not read the hidden states entering and leaving every block")
    return [s / c for s, c in zip(sums, counts, strict=True)]


def _outputs(model: nn.Module, batches: list[Any]) -> list[torch.Tensor]:
    """The first floating-point output tensor of each batch, as ``[rows, features]`` float32."""
    out = []
    for batch in batches:
        y = call_model(model, batch)
        stack = [y]
        while stack:  # depth-first: the first float tensor (logits, last_hidden_state, embeddings)
            v = stack.pop(0)
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                out.append(v.float().reshape(-1, v.shape[-1]))
                break
            if isinstance(v, dict):
                stack = list(v.values()) + stack
            elif isinstance(v, (tuple, list)):
                stack = list(v) + stack
    return out


@torch.no_grad()
def greedy_output_drop(model: nn.Module, blocks: nn.ModuleList, batches: list[Any], n: int) -> list[int]:
    """Choose ``n`` blocks one at a time, each time the one whose skipping moves the output least.

    Example:
        >>> import torch, torch.nn as nn
        >>> class Res(nn.Module):
        ...     def __init__(self, s):
        ...         super().__init__(); self.lin, self.s = nn.Linear(4, 4), s
        ...     def forward(self, x):
        ...         return x + self.s * self.lin(x)
        >>> blocks = nn.ModuleList([Res(1.0), Res(0.0), Res(1.0)])
        >>> greedy_output_drop(nn.Sequential(*blocks), blocks, [(torch.randn(8, 4),)], 1)
        [1]
    """
    skipped: set[int] = set()

    def skip_hook(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            if i not in skipped:
                return None
            h_in = _hidden(args) if args else _hidden(kwargs.get("hidden_states"))
            return (h_in, *out[1:]) if isinstance(out, tuple) else h_in

        return fn

    was_training = model.training
    model.eval()
    try:
        with forward_hooks(((b, skip_hook(i)) for i, b in enumerate(blocks)), with_kwargs=True):
            reference = _outputs(model, batches)
            chosen: list[int] = []
            for _ in range(n):
                best: tuple[float, int] | None = None
                for i in range(len(blocks)):
                    if i in skipped:
                        continue
                    skipped.add(i)
                    outs = _outputs(model, batches)
                    skipped.discard(i)
                    dist = sum(
                        float((1 - F.cosine_similarity(a, b, dim=-1)).mean())
                        for a, b in zip(outs, reference, strict=True)
                    )
                    if best is None or dist < best[0]:
                        best = (dist, i)
                assert best is not None
                skipped.add(best[1])
                chosen.append(best[1])
    finally:
        model.train(was_training)
    return chosen


def drop_blocks_(model: nn.Module, path: str, keep: list[int]) -> nn.Module:
    """Keep only blocks ``keep`` of the ModuleList at ``path`` and update depth counters; returns ``model``."""
    blocks = model.get_submodule(path)
    old = len(blocks)
    replace_module_(model, path, nn.ModuleList([blocks[i] for i in keep]))
    # Depth counters some forwards read (LLaMA slices ``layers[: config.num_hidden_layers]``).
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if getattr(cfg, "num_hidden_layers", None) == old:
            cfg.num_hidden_layers = len(keep)
        if isinstance(module, nn.TransformerEncoder) and module.num_layers == old:
            module.num_layers = len(keep)
    return model


@register_transform(LayerDropping, scope="model")
def _layer_dropping(model: nn.Module, config: LayerDropping, select: Select, ctx: Context) -> nn.Module:
    path, blocks = find_blocks(model, config.container)
    n = len(blocks)
    if config.every_k is not None:
        drop = set(range(config.every_k - 1, n, config.every_k))
    elif config.indices:
        drop = set(config.indices)
        if max(drop) >= n:
            raise ConfigError(f"layer-dropping: indices {sorted(drop)} out of range for {n} blocks in {path!r}")
    else:
        batches = list(ctx.calibration or []) or ([ctx.example_inputs] if ctx.example_inputs is not None else [])
        if not batches:
            raise ConfigError("layer-dropping least_important needs ctx.calibration or ctx.example_inputs")
        if config.least_important >= n:
            raise ConfigError(f"layer-dropping would remove all {n} blocks of {path!r}")
        if config.criterion == "output":
            drop = set(greedy_output_drop(model, blocks, batches, config.least_important))
        else:
            scores = block_influence(model, blocks, batches)
            drop = set(sorted(range(n), key=lambda i: (scores[i], i))[: config.least_important])
            ctx.record("layer-dropping: block influence " + ", ".join(f"{i}:{s:.4f}" for i, s in enumerate(scores)))
    keep = [i for i in range(n) if i not in drop]
    if not keep:
        raise ConfigError(f"layer-dropping would remove all {n} blocks of {path!r}")
    drop_blocks_(model, path, keep)
    record_op(model, "layer-dropping", {"container": path, "size": n, "keep": keep})
    ctx.record(f"layer-dropping: dropped blocks {sorted(drop)} of {n} in {path!r}")
    return model


@register_replay("layer-dropping")
def _replay_layer_dropping(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    ok = isinstance(data, dict) and set(data) == {"container", "size", "keep"} and isinstance(data["keep"], list)
    try:
        blocks = model.get_submodule(data["container"]) if ok else None
    except AttributeError:
        blocks = None
    keep = data.get("keep") if ok else None
    if isinstance(blocks, nn.ModuleList) and isinstance(keep, list) and len(blocks) == len(keep) != data["size"]:
        return model  # built at the reduced depth already (a saved transformers config records it)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != data["size"] or keep != sorted(set(keep)):
        raise UnsafeInputError(f"layer-dropping op does not fit this model: {str(data)[:200]}")
    if not keep or not all(isinstance(i, int) and 0 <= i < len(blocks) for i in keep):
        raise UnsafeInputError(f"layer-dropping op keeps invalid blocks: {keep!r}")
    return drop_blocks_(model, data["container"], keep)
