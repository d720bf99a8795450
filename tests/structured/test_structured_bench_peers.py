"""The peers and recipes of the structured benchmarks, on a small model (the benchmarks themselves are slow)."""

from __future__ import annotations

import torch

from torchslim.bench.digits_structured import _conv_ratio, peer_ln_structured, peer_torch_pruning
from torchslim.measure import count_params
from torchslim.recipes import load_recipe
from torchslim.structured import ChannelPruning
from torchslim.workloads.digits import DigitsCNN


def test_peers_at_the_same_ratio() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 1, 8, 8),)
    base = DigitsCNN(widths=(8, 16)).eval()
    tp_model = peer_torch_pruning(DigitsCNN(widths=(8, 16)).eval(), x, 0.5)
    assert _conv_ratio(tp_model, base) == 0.5 and tp_model(*x).shape == (4, 10)
    masked = peer_ln_structured(DigitsCNN(widths=(8, 16)).eval(), 0.5)
    assert count_params(masked) == count_params(base)  # masks only: nothing removed
    assert int((masked.features[0].weight.flatten(1).abs().sum(1) == 0).sum()) == 4


def test_builtin_channel_recipes() -> None:
    for name, target in (("channels-2x", 0.5), ("channels-4x", 0.25)):
        steps = load_recipe(name).steps
        assert isinstance(steps[0].config, ChannelPruning) and steps[0].config.target_macs_ratio == target
        assert steps[1].config.kind == "finetune"
