from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tiny_hf import tiny_bert

import torchslim as ts
from torchslim.structured import ChannelPruning


def test_activation_importance_removes_dead_neurons_that_l2_keeps() -> None:
    torch.manual_seed(0)
    x = (torch.randn(64, 8),)
    kept = {}
    for importance in ("l2", "activation"):
        m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        with torch.no_grad():
            m[0].bias[:4] = -100.0  # neurons 0-3 never fire ...
            m[2].weight[:, :4] *= 10.0  # ... but carry the largest weights
        ctx = ts.Context(example_inputs=x, calibration=[x])
        ts.compress_(m, ChannelPruning(ratio=0.5, importance=importance), ctx=ctx)
        kept[importance] = m[0].bias
    assert (kept["activation"] > -100).all()  # every dead neuron went
    assert (kept["l2"] == -100).any()


def test_activation_importance_on_bert_heads() -> None:
    m = tiny_bert()
    ids = torch.randint(0, 50, (4, 8))
    ctx = ts.Context(example_inputs=(ids,), calibration=[(ids,)])
    ts.compress_(m, ChannelPruning(ratio=0.5, head_ratio=0.5, importance="activation"), ctx=ctx)
    assert [lay.attention.self.num_attention_heads for lay in m.encoder.layer] == [2, 2]
    assert m(ids).last_hidden_state.shape == (4, 8, 32)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_iterative_head_pruning_reaches_the_ratio_not_more(steps: int) -> None:
    m = tiny_bert()
    ids = torch.randint(0, 50, (4, 8))
    ts.compress_(
        m, ChannelPruning(ratio=0.5, head_ratio=0.5, iterative_steps=steps), ctx=ts.Context(example_inputs=(ids,))
    )
    assert [lay.attention.self.num_attention_heads for lay in m.encoder.layer] == [2, 2]
    assert [lay.intermediate.dense.out_features for lay in m.encoder.layer] == [32, 32]
