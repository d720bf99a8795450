"""Peer variants several benchmarks share: PyTorch's own ways to do what a torchslim row does.

Each builder takes the fp32 model, leaves it untouched, and returns the peer's model with the bytes the
peer saves (``torch.save`` of its state dict: its quantized tensors do not fit safetensors).

Example:
    >>> import torch, torch.nn as nn
    >>> model, size = torch_ao_dynamic(nn.Sequential(nn.Linear(8, 8)))
    >>> type(model[0]).__name__, size > 0
    ('Linear', True)
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn as nn

from torchslim.bench.harness import torch_save_bytes

__all__ = ["Autocast", "torch_ao_dynamic", "torch_ao_static"]


class Autocast(nn.Module):
    """``torch.autocast`` bf16, the usual PyTorch way: fp32 weights, matmuls and convs cast at run time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(*args).float()


def torch_ao_static(model: nn.Module, x: tuple, calibration: list) -> tuple[nn.Module, int]:
    """``torch.ao.quantization`` FX graph mode post-training static quantization (x86 default qconfig; it
    fuses conv-bn-relu itself), calibrated on ``calibration`` batches. Deprecated, still shipped."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warnings, once per call
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), x)
        with torch.no_grad():
            for batch in calibration:
                prepared(*batch)
        quantized = convert_fx(prepared)
    return quantized, torch_save_bytes(quantized)


def torch_ao_dynamic(model: nn.Module) -> tuple[nn.Module, int]:
    """``torch.ao.quantization.quantize_dynamic`` on every Linear (qint8 weights, per-tensor dynamic
    activations on fbgemm). Deprecated, still shipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warning
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    return quantized, torch_save_bytes(quantized)
