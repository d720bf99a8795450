"""A dispatch mode that records the calls of one operator (tests of which kernel a layer runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class OpCalls(TorchDispatchMode):
    """``record(args)`` of each call of ``op`` made while it is active, in order. torchslim's C++ plans call
    their operators through the dispatcher, so a dispatch mode sees them as it sees calls from Python."""

    def __init__(self, op: Any, record: Callable[[tuple], Any]) -> None:
        super().__init__()
        self.op, self.record = op, record

    def __enter__(self):
        self.calls = []
        super().__enter__()
        return self.calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is self.op:
            self.calls.append(self.record(args))
        return func(*args, **(kwargs or {}))
