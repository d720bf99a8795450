from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.pruning import (
    GradualPruning,
    MagnitudePruning,
    NMPruning,
    RandomPruning,
    SparseGPTPruning,
    WandaPruning,
    apply_mask_,
    bake_,
    is_masked,
)
from torchslim.pruning.masks import cubic_sparsity, global_masks, nm_mask, threshold_mask, topk_mask
from torchslim.pruning.sparsegpt import hessian_from_inputs, sparsegpt_prune


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )


CALIB = [(torch.randn(32, 16, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
CALIB_CNN = [(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(2)]


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.95])
def test_topk_exact_count(sparsity):
    s = torch.randn(37, 11)
    assert int((~topk_mask(s, sparsity)).sum()) == round(sparsity * s.numel())


def test_global_masks_exact_total_and_uneven_layers():
    scores = {"a": torch.randn(10, 10).abs(), "b": torch.randn(20, 5).abs() * 10}
    masks = global_masks(scores, 0.5)
    assert sum(int((~m).sum()) for m in masks.values()) == 100
    assert int((~masks["a"]).sum()) > int((~masks["b"]).sum())  # the small-magnitude layer loses more


def test_threshold_removes_exactly_under():
    w = torch.tensor([0.1, -0.2, 0.3, -0.05, 0.2])
    assert threshold_mask(w, 0.2).tolist() == [False, True, True, False, True]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_every_group(n, m):
    s = torch.randn(6, 32)
    mask = nm_mask(s, n, m)
    assert (mask.reshape(6, -1, m).sum(-1) == n).all()
    with pytest.raises(ValueError):
        nm_mask(torch.randn(2, 6), 2, 4)


def test_cubic_schedule_endpoints():
    assert cubic_sparsity(0, 10, 0.0, 0.9) == 0.0 and cubic_sparsity(10, 10, 0.0, 0.9) == pytest.approx(0.9)
    vals = [cubic_sparsity(t, 10, 0.0, 0.9) for t in range(11)]
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False))


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_magnitude_sparsity_per_layer_and_global(scope, sparsity):
    m = mlp()
    ts.compress_(m, MagnitudePruning(sparsity=sparsity, scope=scope))
    inner = [m[2].weight, m[4].weight]
    if scope == "layer":
        for w in inner:
            assert abs(zeros(w) - round(sparsity * w.numel())) <= 1
    else:
        assert abs(sum(zeros(w) for w in inner) - round(sparsity * sum(w.numel() for w in inner))) <= 1
    assert zeros(m[0].weight) == 0 and zeros(m[6].weight) == 0  # first and classifier stay dense
    assert not is_masked(m[2])  # baked


def test_threshold_mode_in_model():
    m = mlp()
    expected = int((m[2].weight.abs() < 0.05).sum()) + int((m[4].weight.abs() < 0.05).sum())
    ts.compress_(m, MagnitudePruning(threshold=0.05))
    assert zeros(m[2].weight) + zeros(m[4].weight) == expected


def test_config_validation():
    with pytest.raises(ConfigError, match="exactly one"):
        MagnitudePruning()
    with pytest.raises(ConfigError, match="exactly one"):
        MagnitudePruning(sparsity=0.5, threshold=0.1)
    with pytest.raises(ConfigError, match="fraction"):
        MagnitudePruning(sparsity=90)
    with pytest.raises(ConfigError, match="smaller than m"):
        NMPruning(n=4, m=4)


def test_wanda_and_sparsegpt_beat_magnitude_on_layer_output():
    torch.manual_seed(0)
    # inputs with a few high-energy features: activation-aware methods must keep their weights
    scale = torch.ones(64)
    scale[:4] = 20.0
    x = torch.randn(512, 64) * scale
    errs = {}
    for name, cfg in [
        ("magnitude", MagnitudePruning(sparsity=0.5, scope="layer", keep_first_last=False)),
        ("wanda", WandaPruning(sparsity=0.5, keep_first_last=False)),
        ("sparsegpt", SparseGPTPruning(sparsity=0.5, keep_first_last=False)),
    ]:
        torch.manual_seed(1)
        layer = nn.Sequential(nn.Linear(64, 32))
        ref = layer(x).detach()
        ts.compress_(layer, cfg, ctx=ts.Context(calibration=[(x,)]))
        assert abs(zeros(layer[0].weight) - 1024) <= 1
        errs[name] = float((layer(x) - ref).norm() / ref.norm())
    assert errs["wanda"] < errs["magnitude"] and errs["sparsegpt"] < errs["wanda"]


def test_sparsegpt_nm_pattern_and_reconstruction():
    torch.manual_seed(0)
    w, x = torch.randn(16, 32), torch.randn(32, 256)
    new, mask = sparsegpt_prune(w, hessian_from_inputs(x), n=2, m=4)
    assert (mask.reshape(16, -1, 4).sum(-1) == 2).all() and bool((new[~mask] == 0).all())
    naive = w * nm_mask(w.abs(), 2, 4)
    assert (new @ x - w @ x).norm() < (naive @ x - w @ x).norm()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_on_cnn_with_grouped_conv(method):
    m = cnn()
    ctx = ts.Context(calibration=CALIB_CNN)
    ts.compress_(m, NMPruning(2, 4, method=method), ctx=ctx)
    for layer in (m[2], m[4]):
        assert (layer.weight.reshape(layer.weight.shape[0], -1, 4).ne(0).sum(-1) <= 2).all()
    assert m(CALIB_CNN[0][0]).shape == (8, 10)
    if method != "magnitude":
        assert any("grouped conv" in e for e in ctx.events)


def test_calibration_errors_are_clear():
    with pytest.raises(ConfigError, match="calibration"):
        ts.compress_(mlp(), WandaPruning(0.5))
    bad = [(torch.full((4, 16), float("nan")),)]
    with pytest.raises(ConfigError, match="NaN"):
        ts.compress_(mlp(), WandaPruning(0.5), ctx=ts.Context(calibration=bad))
    # all-zero calibration: Wanda scores all zero, still exact counts and finite weights
    m = mlp()
    ts.compress_(m, SparseGPTPruning(0.5), ctx=ts.Context(calibration=[(torch.zeros(8, 16),)]))
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())


def test_random_pruning_is_seeded():
    a, b = mlp(), mlp()
    ts.compress_(a, RandomPruning(0.5), ctx=ts.Context(seed=3))
    ts.compress_(b, RandomPruning(0.5), ctx=ts.Context(seed=3))
    assert torch.equal(a[2].weight, b[2].weight) and zeros(a[2].weight) == 2048


def test_masks_survive_optimizer_steps_and_keep_param_identity():
    m = mlp()
    opt_param = m[2].weight
    optimizer = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
    ts.compress_(m, MagnitudePruning(sparsity=0.5, scope="layer", bake=False))
    assert is_masked(m[2]) and m[2].parametrizations.weight.original is opt_param
    mask = m[2].weight != 0
    for _ in range(3):
        optimizer.zero_grad()
        m(torch.randn(8, 16)).sum().backward()
        optimizer.step()
    assert bool((m[2].weight[~mask] == 0).all())
    x = torch.randn(4, 16)
    before = m(x)
    bake_(m)
    assert not is_masked(m[2]) and torch.equal(m(x), before)
    assert bool((m[2].weight[~mask] == 0).all())


def test_apply_mask_shape_check():
    with pytest.raises(ValueError, match="mask shape"):
        apply_mask_(nn.Linear(2, 2), torch.ones(3, 3, dtype=torch.bool))


def test_gradual_reaches_target_and_keeps_learning():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()
    data = lambda: [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]  # noqa: E731
    m = mlp()
    ctx = ts.Context(train_data=data)
    cfg = GradualPruning(final_sparsity=0.9, steps=3, epochs_per_step=3, final_epochs=10, lr=3e-3)
    ts.compress_(m, cfg, ctx=ctx)
    inner = [m[2].weight, m[4].weight]
    assert abs(sum(zeros(w) for w in inner) - round(0.9 * sum(w.numel() for w in inner))) <= 1
    acc = float((m(x).argmax(1) == y).float().mean())
    assert acc > 0.6  # chance is 0.25
    assert [e.split(" at ")[0] for e in ctx.events] == [f"gradual-pruning: step {t}/3" for t in (1, 2, 3)]
    with pytest.raises(ConfigError, match="train_data"):
        ts.compress_(mlp(), cfg)
