"""Each distillation loss equals its published formula on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.distillation import (
    attention_loss,
    ce_loss,
    cosine_loss,
    embedding_loss,
    get_loss,
    hidden_state_loss,
    kd_loss,
    loss_names,
    mse_loss,
    register_loss,
)
from torchslim.errors import ConfigError, RegistryError


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _kd_by_hand(s: list[float], t: list[float], temp: float) -> float:
    p_s = _softmax([v / temp for v in s])
    p_t = _softmax([v / temp for v in t])
    return temp**2 * sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 20.0])
def test_kd_is_t_squared_kl_of_softened_distributions(temp: float) -> None:
    s_rows = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    t_rows = [[3.0, 2.0, 1.0], [0.0, 0.0, 4.0]]
    expected = sum(_kd_by_hand(s, t, temp) for s, t in zip(s_rows, t_rows, strict=True)) / 2  # batch mean
    got = kd_loss(
        torch.tensor(s_rows, dtype=torch.float64), torch.tensor(t_rows, dtype=torch.float64), temperature=temp
    )
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_kd_value_on_a_hand_computed_example() -> None:
    # T = 2: p_t = softmax([0, 2]/2) = (0.26894, 0.73106); p_s = (0.5, 0.5)
    # KL = 0.26894·ln(0.53788) + 0.73106·ln(1.46212) = -0.16678 + 0.27772 = 0.11094; × T² = 0.44378
    got = kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]]), temperature=2.0)
    assert float(got) == pytest.approx(0.44378, abs=1e-4)


def test_kd_gradient_is_t_times_probability_difference() -> None:
    # Hinton et al. 2015: dL/dz_s = T (p_s - p_t) for the T²-scaled loss (one prediction).
    temp = 3.0
    s = torch.tensor([[0.3, -1.2, 2.0, 0.1]], requires_grad=True)
    t = torch.tensor([[1.0, 0.5, -0.5, 2.5]])
    kd_loss(s, t, temperature=temp).backward()
    expected = temp * (F.softmax(s.detach() / temp, -1) - F.softmax(t / temp, -1))
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_kd_of_identical_logits_is_zero_and_token_level_averages_positions() -> None:
    z = torch.randn(2, 5, 7)
    assert float(kd_loss(z, z, temperature=4.0)) == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    per_position = torch.stack([kd_loss(s[i, j][None], t[i, j][None], 2.0) for i in range(2) for j in range(3)])
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(per_position.mean()), rel=1e-5)


def test_kd_at_t1_with_a_one_hot_teacher_tends_to_cross_entropy() -> None:
    s = torch.tensor([[0.2, 1.5, -0.3]])
    t = torch.tensor([[0.0, 60.0, 0.0]])  # softmax(t) is one-hot on class 1 to float precision
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(float(ce_loss(s, torch.tensor([1]))), rel=1e-5)


def test_ce_is_negative_log_probability_of_the_label() -> None:
    s = [[1.0, 2.0, 0.5]]
    expected = -math.log(_softmax(s[0])[2])
    assert float(ce_loss(torch.tensor(s), torch.tensor([2]))) == pytest.approx(expected, rel=1e-6)


def test_mse_hidden_and_embedding_are_mean_squared_errors() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    # ((1)² + 0 + (2)² + (4)²) / 4 = 21 / 4
    assert float(mse_loss(s, t)) == pytest.approx(5.25)
    assert float(embedding_loss(s, t)) == pytest.approx(5.25)
    assert float(hidden_state_loss(s[None], t[None])) == pytest.approx(5.25)


def test_cosine_is_one_minus_cosine_similarity() -> None:
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    # rows: cos = 1 -> 0; cos = 1/sqrt(2) -> 1 - 0.70711
    assert float(cosine_loss(s, t)) == pytest.approx((0.0 + (1 - 1 / math.sqrt(2))) / 2, rel=1e-6)


def test_attention_is_kl_of_teacher_to_student_rows_averaged() -> None:
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # [B=1, H=1, L=2, L=2]
    s = torch.tensor([[[[0.9, 0.1], [0.8, 0.2]]]])
    row0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    row1 = 1.0 * math.log(1.0 / 0.8)  # the teacher's 0 probability contributes 0·log 0 = 0
    assert float(attention_loss(s, t)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert float(attention_loss(t, t)) == pytest.approx(0.0, abs=1e-7)


def test_losses_refuse_mismatched_shapes_and_bad_inputs() -> None:
    with pytest.raises(ValueError, match="projection"):
        mse_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)
    with pytest.raises(ValueError, match="pooled"):
        embedding_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))


def test_registry_lists_every_loss_and_refuses_duplicates() -> None:
    assert {"kd", "ce", "mse", "cosine", "hidden", "attention", "embedding"} <= set(loss_names())
    assert get_loss("ce").reference == "target" and get_loss("kd").temperature
    assert get_loss("mse").projectable and not get_loss("attention").projectable
    with pytest.raises(ConfigError, match="registered: "):
        get_loss("nope")
    with pytest.raises(RegistryError, match="already registered"):
        register_loss("kd")(lambda s, t: s.sum())
    # The spec passes the temperature only to losses that take one.
    z = torch.tensor([[0.0, 1.0]])
    assert float(get_loss("mse")(z, z, 7.0)) == 0.0
