"""Tests for torchslim.training: fit_ learns, is deterministic, and leaves the model in eval mode."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.training import fit_, warmup_cosine


def _toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # linearly separable 2-class problem
    return x, y


def _batches(x: torch.Tensor, y: torch.Tensor):
    calls = iter(range(10**9))

    def make():
        gen = torch.Generator().manual_seed(next(calls))
        order = torch.randperm(len(y), generator=gen)
        return [(x[order[i : i + 32]], y[order[i : i + 32]]) for i in range(0, len(y), 32)]

    return make


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def test_fit_reduces_loss_and_returns_eval_model() -> None:
    x, y = _toy_data()
    model = _model()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    out = fit_(model, _batches(x, y), epochs=20, lr=1e-2, progress=False)
    assert out is model
    assert not model.training
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert after < 0.5 * before
    assert acc >= 0.95


def test_fit_is_deterministic_given_seed() -> None:
    x, y = _toy_data()
    a = fit_(_model(), _batches(x, y), epochs=3, seed=7, progress=False)
    b = fit_(_model(), _batches(x, y), epochs=3, seed=7, progress=False)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_fit_uses_custom_loss_fn_and_generator_data() -> None:
    x, y = _toy_data()
    calls = []

    def loss_fn(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(inputs.shape[0])
        return F.cross_entropy(model(inputs), target, label_smoothing=0.1)

    def gen_data():  # an unsized iterable: fit_ counts it with one extra pass
        return ((x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64))

    fit_(_model(), gen_data, epochs=2, loss_fn=loss_fn, progress=False)
    assert calls == [64] * 8


def test_fit_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="epochs"):
        fit_(_model(), list, epochs=0, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit_(_model(), list, epochs=1, progress=False)


def test_warmup_cosine_schedule_shape() -> None:
    total, warmup = 100, 5
    values = [warmup_cosine(s, total, warmup) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.2)
    assert values[warmup - 1] == pytest.approx(1.0)
    assert values[warmup] == pytest.approx(1.0)
    assert values[total] == pytest.approx(0.0, abs=1e-12)
    decay = values[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert values[warmup + (total - warmup) // 2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)), abs=0.02)


def test_fit_leaves_global_rng_untouched() -> None:
    x, y = _toy_data()
    model = _model()
    state = torch.get_rng_state()
    fit_(model, _batches(x, y), epochs=1, seed=123, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
