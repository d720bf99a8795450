"""Head pruning of nn.MultiheadAttention: the split module equals the original, heads go, the plan reloads."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.structure import structure_ops
from torchslim.errors import UnsafeInputError
from torchslim.io import load, save
from torchslim.structured import ChannelPruning, PruningPlan
from torchslim.structured.attention import PrunedMultiheadAttention, split_attention_

E, H, B, L, S = 16, 4, 3, 5, 7


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, equal_nan=True)  # fully masked rows: NaN in both


def _masks() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[0, -2:] = True
    return {
        "none": {},
        "key-padding": {"key_padding_mask": padding},
        "float-mask": {"attn_mask": torch.randn(L, S, generator=g)},
        "bool-mask": {"attn_mask": torch.rand(L, S, generator=g) > 0.7},
        "per-head-mask+padding": {
            "attn_mask": torch.randn(B * H, L, S, generator=g),
            "key_padding_mask": padding.float(),
        },
    }


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim_vdim", [None, (6, 10)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_split_module_equals_nn_multihead_attention(batch_first, kdim_vdim, bias, need_weights) -> None:
    torch.manual_seed(0)
    kdim, vdim = kdim_vdim or (E, E)
    mha = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, kdim=kdim, vdim=vdim).eval()
    split = PrunedMultiheadAttention.from_mha(mha)
    q, k, v = torch.randn(B, L, E), torch.randn(B, S, kdim), torch.randn(B, S, vdim)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    for name, masks in _masks().items():
        for average in (True, False):
            kw = dict(need_weights=need_weights, average_attn_weights=average, **masks)
            ref, got = mha(q, k, v, **kw), split(q, k, v, **kw)
            assert _close(got[0], ref[0]) and _close(got[1], ref[1]), name


def test_split_module_unbatched_and_causal_hint() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    split = PrunedMultiheadAttention.from_mha(mha)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    x, xb = torch.randn(L, E), torch.randn(B, L, E)
    for need_weights in (True, False):
        assert all(map(_close, split(x, x, x, need_weights=need_weights), mha(x, x, x, need_weights=need_weights)))
        kw = dict(attn_mask=causal, is_causal=True, need_weights=need_weights)
        assert all(map(_close, split(xb, xb, xb, **kw), mha(xb, xb, xb, **kw)))
    with pytest.raises(RuntimeError, match="is_causal"):
        split(xb, xb, xb, is_causal=True)


def encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 8, dim_feedforward=128, batch_first=True, dropout=0.0)
    return nn.TransformerEncoder(layer, 2).eval()  # enable_nested_tensor=True (the default): see the padding test


X = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(2))
HEAD_PARAMS = (
    3 * (32 * 64 + 32) + 32 * 64
)  # per layer: 4 heads of 8 = 32 rows of q/k/v (+ bias), 32 columns of out_proj
FFN_PARAMS = (64 * 64 + 64) + 64 * 64  # per layer: 64 of the 128 FFN neurons (linear1 rows + bias, linear2 columns)


@pytest.mark.parametrize(
    ("select", "ratio", "removed"),
    [
        (None, 0.5, 2 * (HEAD_PARAMS + FFN_PARAMS)),
        (ts.Select(exclude=(r"linear",)), 0.5, 2 * HEAD_PARAMS),
        (None, 0.0, 2 * HEAD_PARAMS),  # ratio 0: heads only (Torch-Pruning alone would remove none)
    ],
    ids=["heads+ffn", "heads-only", "heads-by-ratio-0"],
)
def test_encoder_half_the_heads_removed_and_reloaded(tmp_path, select, ratio, removed) -> None:
    model = encoder()
    with torch.no_grad():
        ref = model(X)
    before = sum(p.numel() for p in model.parameters())
    ctx = ts.Context(example_inputs=(X,))
    ts.compress_(model, ChannelPruning(ratio=ratio, head_ratio=0.5), select=select, ctx=ctx)
    for layer in model.layers:
        att = layer.self_attn
        assert isinstance(att, PrunedMultiheadAttention) and att.num_heads == 4 and att.head_dim == 8
        assert [p.out_features for p in (att.q_proj, att.k_proj, att.v_proj)] == [32] * 3
        assert (att.out_proj.in_features, att.out_proj.out_features) == (32, 64)
    assert before - sum(p.numel() for p in model.parameters()) == removed
    assert "attention heads 16 -> 8" in ctx.events[-1]
    with torch.no_grad():
        out = model(X)
    assert out.shape == ref.shape and torch.isfinite(out).all()

    plan = PruningPlan.of(model)[0]
    assert plan.split_attention == ("layers.0.self_attn", "layers.1.self_attn")
    assert plan.attrs == {f"layers.{i}.self_attn": {"num_heads": 4} for i in range(2)}
    save(model, tmp_path / "art")
    again = load(tmp_path / "art", factory=encoder)
    assert isinstance(again.layers[1].self_attn, PrunedMultiheadAttention) and again.layers[1].self_attn.num_heads == 4
    with torch.no_grad():
        assert torch.equal(again(X), out)


def test_l2_importance_keeps_the_strongest_heads_and_activation_runs() -> None:
    model = encoder()
    with torch.no_grad():  # heads 1, 3, 4, 6 of layer 0 get 10x larger q/k/v rows and out_proj columns
        att = model.layers[0].self_attn
        for h in (1, 3, 4, 6):
            rows = slice(8 * h, 8 * h + 8)
            att.in_proj_weight[rows].mul_(10)
            att.in_proj_weight[64:][rows].mul_(10)
            att.in_proj_weight[128:][rows].mul_(10)
            att.out_proj.weight[:, rows].mul_(10)
    strong = torch.cat([att.in_proj_weight[128:][8 * h : 8 * h + 8] for h in (1, 3, 4, 6)])
    ts.compress_(model, ChannelPruning(ratio=0.5, head_ratio=0.5), ctx=ts.Context(example_inputs=(X,)))
    assert torch.equal(model.layers[0].self_attn.v_proj.weight, strong)  # the kept heads, in order

    calibrated = encoder()
    ctx = ts.Context(example_inputs=(X,), calibration=[(X,), (X * 0.5,)])
    ts.compress_(calibrated, ChannelPruning(ratio=0.5, head_ratio=0.5, importance="activation"), ctx=ctx)
    assert [lay.self_attn.num_heads for lay in calibrated.layers] == [4, 4]


def test_nested_tensor_and_fused_paths_are_off_after_the_split() -> None:
    model = encoder()
    assert model.use_nested_tensor  # the fused path would read self_attn.in_proj_weight
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.inference_mode():
        ref, ref_padded = model(X), model(X, src_key_padding_mask=padding)
    PruningPlan(split_attention=("layers.0.self_attn", "layers.1.self_attn")).apply_(model)
    assert not model.use_nested_tensor
    with torch.inference_mode():
        out, padded = model(X), model(X, src_key_padding_mask=padding)
    assert torch.allclose(out, ref, atol=1e-5)
    keep = ~padding  # the nested-tensor path returns zeros at padded positions; compare the real tokens
    assert torch.allclose(padded[keep], ref_padded[keep], atol=1e-5)


def test_transformer_decoder_self_and_cross_attention_heads() -> None:
    torch.manual_seed(0)
    model = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0), 2).eval()  # [seq, batch, E]
    tgt, memory = torch.randn(6, 2, 32), torch.randn(9, 2, 32)
    fresh = copy.deepcopy(model)
    ts.compress_(model, ChannelPruning(ratio=0.5, head_ratio=0.5), ctx=ts.Context(example_inputs=(tgt, memory)))
    for layer in model.layers:
        assert layer.self_attn.num_heads == 2 and layer.multihead_attn.num_heads == 2
        assert layer.multihead_attn.k_proj.out_features == 16
    with torch.no_grad():
        out = model(tgt, memory)
    assert out.shape == (6, 2, 32) and torch.isfinite(out).all()
    plan = PruningPlan.of(model)[0]
    replayed = PruningPlan.from_dict(plan.to_dict()).apply_(fresh)
    assert all(torch.equal(replayed.state_dict()[k], v) for k, v in model.state_dict().items())


def test_head_ratio_zero_leaves_multihead_attention_alone() -> None:
    model = encoder()
    ts.compress_(model, ChannelPruning(ratio=0.5), ctx=ts.Context(example_inputs=(X,)))
    assert (
        type(model.layers[0].self_attn) is nn.MultiheadAttention
        and "split_attention" not in structure_ops(model)[0]["data"]
    )


def test_split_plan_is_validated() -> None:
    with pytest.raises(UnsafeInputError, match="split_attention"):
        PruningPlan.from_dict({"groups": [], "attrs": {}, "split_attention": "layers.0.self_attn"})
    with pytest.raises(UnsafeInputError, match="cannot split"):
        split_attention_(encoder(), ["layers.0.linear1"])
    with pytest.raises(UnsafeInputError, match="cannot split"):
        split_attention_(encoder(), ["layers.7.self_attn"])
    biased = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(UnsafeInputError, match="cannot split"):
        split_attention_(biased, ["0"])
