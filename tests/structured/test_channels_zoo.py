"""Channel pruning at 50% on a zoo of architectures: runs, keeps outputs valid, reloads from the plan."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load, save
from tiny_hf import tiny_bert

import torchslim as ts
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import UnsupportedModelError
from torchslim.structured import ChannelPruning


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """Residual block; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, stride), conv_bn(cout, cout)
        self.proj = conv_bn(cin, cout, stride, k=1) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))) + self.proj(x))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layers = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 32, 1))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.layers(torch.relu(self.stem(x))).mean((2, 3)))


class MobileGrouped(nn.Module):
    """Pointwise -> depthwise -> grouped conv (groups=4) -> pointwise."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(3, 32, k=1), nn.ReLU(), conv_bn(32, 32, groups=32), nn.ReLU(),
            conv_bn(32, 32, groups=4), nn.ReLU(), conv_bn(32, 16, k=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class Branches(nn.Module):
    """Inception-style: two branches concatenated along channels, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.b1 = conv_bn(16, 8, k=1)
        self.b2 = nn.Sequential(conv_bn(16, 8, k=1), nn.ReLU(), conv_bn(8, 16))
        self.mix = conv_bn(24, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.b1(x)), torch.relu(self.b2(x))], dim=1)
        return self.fc(torch.relu(self.mix(x)).flatten(2).mean(-1))


class Encoder(nn.Module):
    """nn.TransformerEncoder with a classifier on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


class ViTish(nn.Module):
    """ViT-style: conv patch embedding, class token, position embedding, encoder, head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 5, 16) * 0.02)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # [B, 4, 16]
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.enc(t)[:, 0])


IMG = (torch.randn(2, 3, 8, 8),)
TOKENS = (torch.randint(0, 50, (2, 8)),)
ZOO = {
    "resnet-projection": (ResNetish, IMG, 0.0),
    "depthwise-grouped": (MobileGrouped, IMG, 0.0),
    "concat-branches": (Branches, IMG, 0.0),
    "transformer-encoder": (Encoder, (torch.randn(2, 6, 16),), 0.5),  # heads of nn.MultiheadAttention too
    "vit-patch-embedding": (ViTish, IMG, 0.0),
    "hf-bert-heads": (tiny_bert, TOKENS, 0.5),
}


def _build(factory):
    torch.manual_seed(0)
    return factory().eval()


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _outputs(o)] if isinstance(out, (list, tuple)) else []


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_prunes_half_and_reloads_from_plan(name: str) -> None:
    factory, inputs, head_ratio = ZOO[name]
    model = _build(factory)
    with torch.no_grad():
        ref = _outputs(model(*inputs))
    before = sum(p.numel() for p in model.parameters())
    original = copy.deepcopy(model)
    ctx = ts.Context(example_inputs=inputs)
    ts.compress_(model, ChannelPruning(ratio=0.5, head_ratio=head_ratio), ctx=ctx)
    with torch.no_grad():
        out = _outputs(model(*inputs))
    assert [t.shape for t in out] == [t.shape for t in ref]
    assert all(torch.isfinite(t).all() for t in out)
    assert sum(p.numel() for p in model.parameters()) < 0.85 * before
    if name == "transformer-encoder":  # 4 heads of 4 wide -> 2
        assert [(lay.self_attn.num_heads, lay.self_attn.q_proj.out_features) for lay in model.enc.layers] == [
            (2, 8)
        ] * 2

    # The plan alone, on a fresh model, rebuilds the shapes; the weights go through safetensors (no pickle).
    fresh = replay_ops(_build(factory), structure_ops(model))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    fresh.load_state_dict(load(save(state)))
    with torch.no_grad():
        again = _outputs(fresh.eval()(*inputs))
    assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True))
    # On the original weights the plan reproduces the pruned weights exactly.
    replayed = replay_ops(original, structure_ops(model))
    assert all(torch.equal(replayed.state_dict()[k], v) for k, v in model.state_dict().items())


def test_bert_heads_and_ffn_halved_with_patched_attributes() -> None:
    model = _build(tiny_bert)
    ts.compress_(model, ChannelPruning(ratio=0.5, head_ratio=0.5), ctx=ts.Context(example_inputs=TOKENS))
    for layer in model.encoder.layer:
        att = layer.attention.self
        assert (att.num_attention_heads, att.all_head_size, att.query.out_features) == (2, 16, 16)
        assert layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == 32
    assert model.embeddings.word_embeddings.embedding_dim == 32  # the hidden size (the output) is kept


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(4, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.gru(self.lstm(self.emb(x))[0])[0][:, -1])


def test_lstm_refused_with_the_whole_list_before_any_change() -> None:
    model = Recurrent()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError) as info:
        ts.compress_(model, ChannelPruning(ratio=0.5), ctx=ts.Context(example_inputs=(torch.randn(2, 3, 4),)))
    assert info.value.exit_code == 5
    assert "lstm (LSTM)" in str(info.value) and "gru (GRU)" in str(info.value)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert structure_ops(model) == []


def test_gpt2_conv1d_refused() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2Model(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="Conv1D"):
        ts.compress_(model, ChannelPruning(ratio=0.5), ctx=ts.Context(example_inputs=TOKENS))


def test_llama_refused_quickly_instead_of_hanging() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="RotaryEmbedding"):
        ts.compress_(model, ChannelPruning(ratio=0.5), ctx=ts.Context(example_inputs=(torch.randint(0, 64, (2, 8)),)))
