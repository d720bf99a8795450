"""Student builders: a shallower copy of the teacher, initialised from the teacher's own blocks.

Depth reduction keeps some of the teacher's repeated blocks (transformer layers) and drops the rest;
the kept blocks start with the teacher's weights, so distillation begins close to the teacher
(DistilBERT, Sanh et al. 2019, initialises its 6 layers from every other layer of BERT's 12). Any
other ``nn.Module`` can be a student too: pass it to :func:`~torchslim.distillation.distill` directly.
For a *narrower* student, prune the teacher's copy structurally (``ChannelPruning`` in
``torchslim.structured``), then distil: the recipe ``channel-pruning → distill`` does it as data.

Example:
    >>> import torch.nn as nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))
    ...     def forward(self, x):
    ...         for layer in self.layers:
    ...             x = layer(x)
    ...         return x
    >>> teacher = Net()
    >>> student = keep_every_kth_block(teacher, 2)
    >>> len(student.layers), student.layers[1].weight.data_ptr() != teacher.layers[2].weight.data_ptr()
    (3, True)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch.nn as nn

from torchslim.api import compress_
from torchslim.errors import ConfigError
from torchslim.structured.layer_drop import LayerDropping, find_blocks

__all__ = ["drop_blocks", "find_blocks", "keep_every_kth_block"]


def drop_blocks(teacher: nn.Module, keep: Sequence[int], *, blocks: str | None = None) -> nn.Module:
    """A deep copy of ``teacher`` keeping only the blocks at ``keep``, with the teacher's weights.

    The removal is :class:`~torchslim.structured.LayerDropping` (``indices`` = the others) on the copy,
    so depth counters (``config.num_hidden_layers``) follow and the op is recorded for ``ts.save`` /
    ``ts.load``; ``layer_idx`` attributes are renumbered as well, so decoder caches stay consistent.
    The teacher is not changed.

    Args:
        teacher: the model to shrink.
        keep: indexes of the blocks to keep, strictly increasing.
        blocks: qualified name of the ``ModuleList`` of blocks; default: found automatically
            (the longest ``nn.ModuleList`` of same-class modules, e.g. ``encoder.layer``).

    Returns:
        The new, shallower model.

    Raises:
        ConfigError: ``keep`` is empty, out of range or not strictly increasing.
        UnsupportedModelError: no block stack found, or ``blocks`` is not a ModuleList.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Module(); m.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(4))
        >>> len(drop_blocks(m, [0, 3]).layers)
        2
    """
    student = copy.deepcopy(teacher)
    path, stack = find_blocks(student, blocks)
    n = len(stack)
    keep = list(keep)
    if not keep or any(not isinstance(i, int) or not 0 <= i < n for i in keep) or keep != sorted(set(keep)):
        raise ConfigError(f"keep must be strictly increasing block indexes in [0, {n}), got {keep}")
    drop = tuple(i for i in range(n) if i not in keep)
    if drop:
        compress_(student, LayerDropping(indices=drop, container=path))
    for new_index, block in enumerate(student.get_submodule(path)):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    return student


def keep_every_kth_block(teacher: nn.Module, k: int, *, offset: int = 0, blocks: str | None = None) -> nn.Module:
    """A shallower copy of ``teacher`` keeping blocks ``offset, offset + k, offset + 2k, ...``.

    Args:
        teacher: the model to shrink (unchanged).
        k: keep one block in ``k`` (``k = 2`` halves the depth).
        offset: index of the first kept block, in ``[0, k)``.
        blocks: qualified name of the block ``ModuleList``; default: found automatically.

    Raises:
        ConfigError: ``k < 1`` or ``offset`` outside ``[0, k)``.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Module(); m.h = nn.ModuleList(nn.Linear(2, 2) for _ in range(6))
        >>> s = keep_every_kth_block(m, 2, offset=1)
        >>> [bool((a.weight == m.h[i].weight).all()) for a, i in zip(s.h, (1, 3, 5))]
        [True, True, True]
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not isinstance(offset, int) or not 0 <= offset < k:
        raise ConfigError(f"offset must be in [0, {k}), got {offset!r}")
    path, stack = find_blocks(teacher, blocks)
    return drop_blocks(teacher, list(range(offset, len(stack), k)), blocks=path)
