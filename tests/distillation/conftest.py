"""Run the distillation tests on one intra-op thread.

Their models are tiny: a second thread adds a synchronisation per op that costs more than the work
itself, and one thread also makes the timings repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
