"""Shared fixtures of the quantization tests."""

from __future__ import annotations

import pytest
import torch

from torchslim.quantization.int8 import compile_cpu


@pytest.fixture
def matmul_attention_calls(monkeypatch) -> list[bool]:
    """Record every call of the int8 backend's attention decomposition (True: it replaced the kernel).

    Forces the bf16 capability check on, so the decomposition is exercised on any CPU (bf16 matmuls
    run everywhere, natively or not).
    """
    calls: list[bool] = []
    real = compile_cpu.bf16_attention

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not NotImplemented)
        return out

    monkeypatch.setattr(compile_cpu, "bf16_attention", counting)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    return calls
