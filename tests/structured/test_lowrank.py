from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.config import config_from_dict
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import ConfigError
from torchslim.structured.lowrank import LowRank, LowRankConv2d, LowRankLinear, factorize


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 1))


@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (8, 8)])
def test_full_rank_reproduces_the_layer(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    x = torch.randn(5, shape[0])
    full = factorize(lin, min(shape))
    assert torch.allclose(full(x), lin(x), atol=1e-5)


def test_rank_ratio_factorization_is_smaller_and_close_on_low_rank_weights() -> None:
    m = model()
    with torch.no_grad():  # make layer 0 exactly rank 8 so a rank-8 factorization is exact
        m[0].weight.copy_(torch.randn(64, 8) @ torch.randn(8, 32) / 8)
    x = torch.randn(4, 32)
    ref0 = m[0](x)
    w2 = m[2].weight.detach().clone()
    before = sum(p.numel() for p in m.parameters())
    ctx = ts.Context()
    ts.compress_(m, LowRank(rank_ratio=0.25), ctx=ctx)
    assert isinstance(m[0], LowRankLinear) and m[0].rank == 8 and isinstance(m[2], LowRankLinear)
    assert type(m[4]) is nn.Linear  # 32x1: a rank-1 split would not be smaller
    assert sum(p.numel() for p in m.parameters()) < before
    assert torch.allclose(m[0](x), ref0, atol=1e-5)  # layer 0 has rank 8: exact
    # Eckart-Young: the error of the rank-r factorization is exactly the dropped singular values' energy
    s2 = torch.linalg.svdvals(w2.double())
    err = (m[2].up.weight @ m[2].down.weight - w2).double().norm() ** 2
    assert torch.isclose(err, s2[m[2].rank :].pow(2).sum(), rtol=1e-4)
    assert "factored 2" in ctx.events[-1]
    fresh = replay_ops(model(), structure_ops(m))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), m(x))


def test_energy_picks_the_rank_holding_the_spectrum() -> None:
    lin = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([10.0, 5.0] + [0.01] * 14)))
    m = nn.Sequential(lin)
    ts.compress_(m, LowRank(energy=0.99))
    assert m[0].rank == 2
    x = torch.randn(3, 16)
    assert torch.allclose(m[0](x), x @ torch.diag(torch.tensor([10.0, 5.0] + [0.0] * 14)), atol=0.05)


def test_config() -> None:
    assert LowRank().rank_ratio == 0.5
    assert config_from_dict(LowRank(energy=0.9).to_dict()) == LowRank(energy=0.9)
    with pytest.raises(ConfigError):
        LowRank(rank_ratio=0.5, energy=0.9)
    with pytest.raises(ConfigError):
        LowRank(rank_ratio=2.0)


# --- Conv2d: the weight [out, in, kh, kw] reshaped to [out, in·kh·kw] ---------------------------------


class Cnn(nn.Module):
    """A 3x3 stem, a strided dilated conv, a depthwise conv, a 1x1 conv and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=2, dilation=2, bias=False)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 64, 1)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(torch.relu(self.down(x))))
        return self.head(torch.relu(self.pw(x)).mean((2, 3)))


def build_cnn() -> nn.Module:
    torch.manual_seed(0)
    return Cnn().eval()


CONVS = {
    "3x3": dict(in_channels=6, out_channels=10, kernel_size=3),
    "stride2-pad1": dict(in_channels=6, out_channels=10, kernel_size=3, stride=2, padding=1),
    "dilation2-pad2-nobias": dict(in_channels=4, out_channels=12, kernel_size=3, padding=2, dilation=2, bias=False),
    "5x3-stride(2,1)": dict(in_channels=3, out_channels=8, kernel_size=(5, 3), stride=(2, 1), padding=(2, 0)),
    "1x1": dict(in_channels=16, out_channels=8, kernel_size=1),
    "reflect-same": dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", padding_mode="reflect"),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_full_rank_reproduces_the_conv(name: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONVS[name])
    full_rank = min(conv.out_channels, conv.weight[0].numel())
    low = factorize(conv, full_rank)
    assert isinstance(low, LowRankConv2d) and isinstance(low, nn.Sequential) and low.rank == full_rank
    assert (low.up.bias is None) == (conv.bias is None) and low.down.bias is None
    x = torch.randn(2, conv.in_channels, 11, 9)
    assert low(x).shape == conv(x).shape
    assert torch.allclose(low(x), conv(x), atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_truncated_rank_removes_the_expected_params(bias: bool) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=bias))
    before = sum(p.numel() for p in m.parameters())
    ts.compress_(m, LowRank(rank_ratio=0.25))  # rank = ceil(0.25 * min(32, 16·9)) = 8
    assert isinstance(m[0], LowRankConv2d) and m[0].rank == 8
    assert before - sum(p.numel() for p in m.parameters()) == 32 * 16 * 9 - 8 * (16 * 9 + 32)
    assert m[0].down.weight.shape == (8, 16, 3, 3) and m[0].up.weight.shape == (32, 8, 1, 1)


def _layer_shapes(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}
    hooks = [
        getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, o.shape))
        for n in ("stem", "down", "dw", "pw", "head")
    ]
    m(x)
    for h in hooks:
        h.remove()
    return shapes


def test_conv_truncation_error_is_the_dropped_spectrum_and_shapes_are_kept() -> None:
    m = build_cnn()
    w = m.down.weight.detach().clone()
    x = torch.randn(2, 3, 16, 16)
    shapes = _layer_shapes(m, x)
    ctx = ts.Context()
    ts.compress_(m, LowRank(rank_ratio=0.5), ctx=ctx)
    assert isinstance(m.stem, LowRankConv2d) and isinstance(m.down, LowRankConv2d) and isinstance(m.pw, LowRankConv2d)
    assert type(m.dw) is nn.Conv2d  # depthwise: skipped
    assert "1 grouped/depthwise conv(s) skipped" in ctx.events[-1]
    assert m.down.down.stride == (2, 2) and m.down.down.padding == (2, 2) and m.down.down.dilation == (2, 2)
    assert _layer_shapes(m, x) == shapes  # every layer's output shape, stride 2 / padding / dilation included
    # Eckart-Young on the reshaped weight [out, in·kh·kw]
    approx = (m.down.up.weight.flatten(1) @ m.down.down.weight.flatten(1)).double()
    s2 = torch.linalg.svdvals(w.flatten(1).double()).pow(2)
    assert torch.isclose((approx - w.flatten(1).double()).norm() ** 2, s2[m.down.rank :].sum(), rtol=1e-4)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation"), [(2, 0, 1), (2, 1, 1), (1, 2, 2), (2, 3, 3), (1, "same", 2)]
)
def test_factorized_conv_keeps_output_shapes(stride: int, padding: int | str, dilation: int) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 24, 3, stride=stride, padding=padding, dilation=dilation))
    x = torch.randn(2, 8, 17, 13)
    shape = m(x).shape
    ts.compress_(m, LowRank(rank_ratio=0.25))
    assert isinstance(m[0], LowRankConv2d) and m(x).shape == shape


def test_conv_energy_and_only_if_smaller() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False)
    with torch.no_grad():  # an exactly rank-3 weight: energy 0.999 keeps 3
        conv.weight.copy_((torch.randn(16, 3) @ torch.randn(3, 8 * 9)).reshape(16, 8, 3, 3))
    m = nn.Sequential(conv, nn.Conv2d(2, 3, 3))
    x = torch.randn(1, 8, 9, 9)
    ref = conv(x)
    ts.compress_(m, LowRank(energy=0.999))
    assert m[0].rank == 3 and torch.allclose(m[0](x), ref, atol=1e-4)
    assert type(m[1]) is nn.Conv2d  # 3 x 18: no rank is smaller than the whole conv


def test_depthwise_and_grouped_convs_are_skipped() -> None:
    m = nn.Sequential(nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 32, 3, groups=4))
    ctx = ts.Context()
    ts.compress_(m, LowRank(rank_ratio=0.1), ctx=ctx)
    assert [type(c) for c in m] == [nn.Conv2d, nn.Conv2d] and structure_ops(m) == []
    assert "2 grouped/depthwise" in ctx.events[-1]


def test_second_run_leaves_the_factored_halves_alone() -> None:
    m = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(64, 64))
    ts.compress_(m, LowRank(rank_ratio=0.25))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ts.compress_(m, LowRank(rank_ratio=0.25))
    assert state.keys() == m.state_dict().keys() and len(structure_ops(m)) == 1


def test_low_rank_cnn_saves_and_reloads_exactly(tmp_path) -> None:
    from torchslim.io import load, save

    m = build_cnn()
    ts.compress_(m, LowRank(rank_ratio=0.25))  # ranks: ceil(0.25 · min(out, in·kh·kw))
    assert structure_ops(m)[-1]["data"]["layers"] == {"stem": 7, "down": 8, "pw": 8, "head": 2}
    save(m, tmp_path / "art")
    assert sorted(f.name for f in (tmp_path / "art").iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "structure.json",
    ]
    again = load(tmp_path / "art", factory=build_cnn)
    assert isinstance(again.stem, LowRankConv2d) and again.down.rank == 8 and type(again.dw) is nn.Conv2d
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(again(x), m(x))
