"""Forward hooks that live for one ``with`` block: registered on entry, every one removed on exit.

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> seen = []
    >>> with forward_hooks([(m[0], lambda mod, args, out: seen.append(out.shape))]):
    ...     _ = m(torch.ones(3, 2))
    >>> seen, len(m[0]._forward_hooks)
    ([torch.Size([3, 2])], 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn as nn
from torch.utils.hooks import RemovableHandle

__all__ = ["forward_hooks"]


@contextmanager
def forward_hooks(
    pairs: Iterable[tuple[nn.Module, Callable[..., Any]]], *, pre: bool = False, with_kwargs: bool = False
) -> Iterator[list[RemovableHandle]]:
    """Register each ``(module, hook)`` of ``pairs`` as a forward hook (``pre``: a forward pre-hook) for the
    ``with`` block; yields the handles, in the order of ``pairs``.

    Every registered hook is removed on exit, also when the block raises and when registering (or
    building ``pairs``, which may be a generator) fails part-way. ``with_kwargs`` is passed on to
    :meth:`torch.nn.Module.register_forward_hook` / :meth:`~torch.nn.Module.register_forward_pre_hook`:
    the hook also receives the forward's keyword arguments (signatures as PyTorch documents them).

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(2, 2)
        >>> zero = lambda mod, args: (torch.zeros_like(args[0]),)  # a pre-hook may replace the inputs
        >>> with forward_hooks([(lin, zero)], pre=True) as handles:
        ...     torch.equal(lin(torch.ones(2)), lin.bias)
        True
        >>> len(handles), len(lin._forward_pre_hooks)
        (1, 0)
    """
    handles: list[RemovableHandle] = []
    try:
        for module, hook in pairs:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook, with_kwargs=with_kwargs))
        yield handles
    finally:
        for handle in handles:
            handle.remove()
