from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tiny_hf import tiny_bert

import torchslim as ts
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError, UnsafeInputError, UnsupportedModelError
from torchslim.structured.layer_drop import LayerDropping


def six_block_bert() -> nn.Module:
    return tiny_bert(hidden=16, layers=6, heads=2, ffn=32)


class Scaled(nn.Module):
    """A residual block whose update size is set by ``scale``: a small scale barely rotates its input."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.lin, self.scale = nn.Linear(8, 8), scale

    def forward(self, x):
        return x + self.scale * self.lin(x)


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Scaled(s) for s in (1.0, 0.01, 1.0, 0.02, 1.0)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_every_k_on_bert_replays_and_updates_depth() -> None:
    m = six_block_bert()
    ids = torch.randint(0, 50, (2, 8))
    ts.compress_(m, LayerDropping(every_k=2))
    assert len(m.encoder.layer) == 3 and m.config.num_hidden_layers == 3
    fresh = replay_ops(six_block_bert(), structure_ops(m))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(ids).last_hidden_state, m(ids).last_hidden_state)


@pytest.mark.parametrize("criterion", ["block-influence", "output"])
def test_least_important_drops_the_blocks_that_change_least(criterion: str) -> None:
    torch.manual_seed(0)
    m = Stack()
    ctx = ts.Context(example_inputs=(torch.randn(16, 8),))
    ts.compress_(m, LayerDropping(least_important=2, criterion=criterion), ctx=ctx)
    assert [b.scale for b in m.blocks] == [1.0, 1.0, 1.0]
    assert structure_ops(m)[0]["data"] == {"container": "blocks", "size": 5, "keep": [0, 2, 4]}


def test_indices_and_transformer_encoder() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    m = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
    ts.compress_(m, LayerDropping(indices=(0, 3)))
    assert len(m.layers) == 2 and m.num_layers == 2
    assert m(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_errors() -> None:
    with pytest.raises(ConfigError):
        LayerDropping()
    with pytest.raises(ConfigError):
        LayerDropping(every_k=2, indices=(1,))
    with pytest.raises(ConfigError):
        ts.compress_(Stack(), LayerDropping(indices=(0, 1, 2, 3, 4)))
    with pytest.raises(UnsupportedModelError):
        ts.compress_(nn.Linear(2, 2), LayerDropping(every_k=2))
    with pytest.raises(UnsafeInputError):
        replay_ops(Stack(), [{"op": "layer-dropping", "data": {"container": "blocks", "size": 4, "keep": [0]}}])
