"""Multiply-accumulate counts through ``torch.utils.flop_counter``.

Example:
    >>> import torch, torch.nn as nn
    >>> count_macs(nn.Linear(10, 5, bias=False), (torch.zeros(1, 10),))
    50
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, example_inputs: tuple[Any, ...], *, per_sample: bool = False) -> int:
    """MACs of one forward pass on ``example_inputs`` (FLOPs / 2 as counted by PyTorch).

    Args:
        model: the model, run under ``torch.inference_mode()``.
        example_inputs: positional inputs.
        per_sample: divide by the batch size (first dim of the first tensor input).
    """
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*example_inputs)
    macs = counter.get_total_flops() // 2
    if per_sample:
        first = next((x for x in example_inputs if isinstance(x, torch.Tensor) and x.dim() > 0), None)
        if first is not None and first.shape[0] > 0:
            macs //= first.shape[0]
    return int(macs)
