"""Shared test helpers at the top of ``tests/`` (such as :mod:`multiproc`) are importable from every test folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def one_thread():
    """Run a test at one torch thread (tiny models: one thread avoids OpenMP spin-waits on a shared
    machine); the previous count is restored. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def int8_kernels(monkeypatch):
    """Run the static int8 modules on the quantized CPU kernels even where ``exact_int8_kernels()`` sends
    them to the float reference path (x86 without VNNI, whose kernels may saturate): for tests of the
    uint8 dataflow between layers, not of exact sums."""
    from torchslim.quantization.int8 import static, static_add

    monkeypatch.setattr(static_add, "exact_int8_kernels", lambda: True)
    monkeypatch.setattr(static, "exact_int8_kernels", lambda: True)
