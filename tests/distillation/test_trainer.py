"""The distillation trainer: frozen teacher, Hinton objective, resume, early stopping, projections, recipes."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from torchslim.core.context import Context
from torchslim.distillation import DistillConfig, LossTerm, distill, train_distill
from torchslim.distillation.checkpoint import CHECKPOINT_NAME
from torchslim.errors import ConfigError
from torchslim.recipes import recipe_from_dict, run_recipe
from torchslim.training import fit_


def _data(n: int = 128, batch: int = 32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] - x[:, 1] > 0).long()
    calls = iter(range(10**9))

    def make():
        g = torch.Generator().manual_seed(next(calls))
        order = torch.randperm(n, generator=g)
        return [(x[order[i : i + batch]], y[order[i : i + batch]]) for i in range(0, n, batch)]

    return make, x, y


def _teacher_arch() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))


@functools.lru_cache(maxsize=1)
def _teacher_state() -> dict[str, torch.Tensor]:
    make, _, _ = _data()
    return fit_(_teacher_arch(), make, epochs=10, lr=1e-2, progress=False).state_dict()


def _teacher() -> nn.Module:
    """A trained teacher (trained once per session), fresh and without gradients each call."""
    t = _teacher_arch()
    t.load_state_dict(_teacher_state())
    return t.eval()


def _student(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Dropout(dropout), nn.Linear(6, 2))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_teacher_gets_no_gradient_and_stays_unchanged() -> None:
    teacher = _teacher().train()  # given in train mode on purpose
    for p in teacher.parameters():
        p.requires_grad_(True)
    before = _params(teacher)
    student = _student()
    s_before = _params(student)
    make, _, _ = _data()
    run = train_distill(student, teacher, make, DistillConfig(epochs=2, lr=1e-2), progress=False)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    # The caller's modes and flags come back as they were.
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert run.steps == 8 and len(run.history) == 8 and not student.training
    assert any(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items())


def test_alpha_zero_equals_cross_entropy_training_with_fit() -> None:
    """KD with weight 0 on the soft targets (T = 1) is plain cross-entropy training: same weights as fit_."""
    make_a, x, y = _data()
    make_b, _, _ = _data()
    a = distill(_student(0.2), _teacher(), make_a, DistillConfig(alpha=0.0, temperature=1.0, epochs=3), progress=False)
    b = fit_(_student(0.2), make_b, epochs=3, lr=1e-3, weight_decay=1e-4, progress=False)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)


def test_logged_loss_is_the_weighted_objective() -> None:
    teacher, student = _teacher(), _student()
    _, x, y = _data()
    cfg = DistillConfig(alpha=0.7, temperature=3.0, epochs=1, lr=1e-9, warmup=0.0)
    with torch.no_grad():
        s, t = student(x), teacher(x)
        expected = 0.7 * 9.0 * F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean")
        expected += 0.3 * F.cross_entropy(s, y)
    run = train_distill(student, teacher, lambda: [(x, y)], cfg, progress=False)
    assert run.history[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert run.history[0]["kd"] + run.history[0]["ce"] == pytest.approx(run.history[0]["loss"], rel=1e-6)


def test_kd_student_learns_to_agree_with_the_teacher() -> None:
    teacher, student = _teacher(), _student()
    make, x, _ = _data()
    agree_before = (student(x).argmax(-1) == teacher(x).argmax(-1)).float().mean()
    distill(student, teacher, make, DistillConfig(epochs=15, lr=1e-2), progress=False)
    agree_after = (student(x).argmax(-1) == teacher(x).argmax(-1)).float().mean()
    assert agree_after > max(0.85, agree_before + 0.1)


def test_deterministic_given_seed() -> None:
    outs = []
    for _ in range(2):
        make, _, _ = _data()
        outs.append(_params(distill(_student(0.3), _teacher(), make, DistillConfig(epochs=2, seed=5), progress=False)))
    assert all(torch.equal(v, outs[1][k]) for k, v in outs[0].items())


class _Interrupt:
    """Data callable raising KeyboardInterrupt at global batch ``at`` (simulates Ctrl-C)."""

    def __init__(self, at: int) -> None:
        self.make, _, _ = _data()
        self.at, self.seen = at, 0

    def __call__(self):
        batches = self.make()
        for b in batches:
            if self.seen == self.at:
                raise KeyboardInterrupt
            self.seen += 1
            yield b


def test_resume_continues_from_the_same_step_with_the_same_loss(tmp_path) -> None:
    cfg = DistillConfig(epochs=3, lr=1e-2, checkpoint_every=4)
    full = train_distill(_student(0.3), _teacher(), _Interrupt(at=-1), cfg, progress=False)

    # Batches read: 4 to count the unsized data, 1 to size projections, 4 in epoch 1, 2 in epoch 2;
    # Ctrl-C while fetching the batch of step 7, between the periodic checkpoints at 4 and 8.
    with pytest.raises(KeyboardInterrupt):
        train_distill(_student(0.3), _teacher(), _Interrupt(at=11), cfg, checkpoint_dir=str(tmp_path), progress=False)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 6 and len(saved["history"]) == 6

    resumed = train_distill(
        _student(0.3), _teacher(), _Interrupt(at=-1), cfg, checkpoint_dir=str(tmp_path), progress=False
    )
    assert [h["step"] for h in resumed.history] == list(range(1, 13)) and resumed.steps == 12
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for k, v in resumed.student.state_dict().items():
        assert torch.equal(v, full.student.state_dict()[k]), k
    # Resuming a finished run trains nothing and gives the same model.
    again = train_distill(
        _student(0.3), _teacher(), _Interrupt(at=-1), cfg, checkpoint_dir=str(tmp_path), progress=False
    )
    assert again.steps == 12 and again.samples == 0 and again.history == resumed.history
    assert all(torch.equal(v, full.student.state_dict()[k]) for k, v in again.student.state_dict().items())


def test_resume_refuses_a_changed_config(tmp_path) -> None:
    make, _, _ = _data()
    train_distill(_student(), _teacher(), make, DistillConfig(epochs=1), checkpoint_dir=str(tmp_path), progress=False)
    make, _, _ = _data()
    with pytest.raises(ConfigError, match=r"config\.lr"):
        train_distill(
            _student(), _teacher(), make, DistillConfig(epochs=1, lr=5e-3), checkpoint_dir=str(tmp_path), progress=False
        )


def test_early_stopping_keeps_the_best_weights() -> None:
    make, _, _ = _data()
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.1, 0.1, 0.1])
    kept: list[dict[str, torch.Tensor]] = []

    def eval_fn(model: nn.Module) -> dict[str, float]:
        kept.append(_params(model))
        return {"acc": next(scores)}

    cfg = DistillConfig(epochs=10, eval_every=2, patience=3, lr=1e-2)
    run = train_distill(_student(), _teacher(), make, cfg, eval_fn=eval_fn, progress=False)
    # 0.5, 0.9 (best), then 3 evaluations without improvement: stop after step 10 of 40.
    assert run.stopped_early and run.steps == 10 and run.best == 0.9
    assert [e["step"] for e in run.evals] == [2, 4, 6, 8, 10]
    assert all(torch.equal(v, kept[1][k]) for k, v in run.student.state_dict().items())


def test_feature_terms_with_a_learned_projection_and_bf16() -> None:
    teacher, student = _teacher(), _student()
    make, x, _ = _data()
    cfg = DistillConfig(
        epochs=15,
        lr=1e-2,
        precision="bf16",
        terms=(LossTerm("kd", 1.0), LossTerm("mse", 1.0, student="1", teacher="1"), LossTerm("ce", 0.1)),
    )
    run = train_distill(student, teacher, make, cfg, progress=False)  # widths 6 -> 32: a projection
    first, last = run.history[0], run.history[-1]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in run.history)
    assert last["mse"] < first["mse"] and last["kd"] < first["kd"]


def test_a_loss_without_projection_refuses_different_widths() -> None:
    cfg = DistillConfig(terms=(LossTerm("attention", 1.0, student="1", teacher="1"),))
    make, _, _ = _data()
    with pytest.raises(ConfigError, match="no projection"):
        train_distill(_student(), _teacher(), make, cfg, progress=False)


def test_bad_inputs_are_refused() -> None:
    teacher = _teacher()
    make, x, _ = _data()
    with pytest.raises(ConfigError, match="share parameters"):
        distill(teacher, teacher, make, progress=False)
    with pytest.raises(ConfigError, match="needs labels"):
        distill(_student(), teacher, lambda: [(x,)], DistillConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="no batches"):
        distill(_student(), teacher, list, progress=False)


def test_dataset_data_uses_the_global_batch_size() -> None:
    _, x, y = _data(n=100)
    run = train_distill(
        _student(), _teacher(), TensorDataset(x, y), DistillConfig(epochs=2, batch_size=32), progress=False
    )
    assert run.steps == 8 and run.samples == 200


def test_recipe_step_uses_a_frozen_copy_of_the_input_model_as_teacher() -> None:
    teacher = _teacher()
    model = copy.deepcopy(teacher)
    make, x, y = _data()
    ctx = Context(train_data=make)
    recipe = recipe_from_dict({"name": "d", "steps": [{"kind": "distill", "epochs": 2, "lr": 0.01}]})
    out, report = run_recipe(model, recipe, ctx, measure_steps=False)
    assert out is model and ctx.teacher is None  # the caller's context is left as it was
    # Distilling a model from itself keeps its predictions.
    assert (out(x).argmax(-1) == teacher(x).argmax(-1)).float().mean() > 0.95
    with pytest.raises(ConfigError, match="needs a teacher"):
        from torchslim.api import compress_

        compress_(model, DistillConfig(), ctx=Context(train_data=make))


def test_prune_then_distill_recipe_recovers_accuracy_from_the_unpruned_model() -> None:
    pytest.importorskip("torch_pruning")
    from torchslim.workloads.digits import DigitsWorkload

    wl = DigitsWorkload()
    prune = {"kind": "channel-pruning", "target_macs_ratio": 0.25, "importance": "l2", "scope": "layer"}
    distill_step = {"kind": "distill", "epochs": 3, "lr": 0.003, "alpha": 0.9, "temperature": 4.0}
    pruned, _ = run_recipe(wl.model(), recipe_from_dict({"steps": [prune]}), wl.context(), measure_steps=False)
    recipe = recipe_from_dict({"name": "prune-kd", "steps": [prune, distill_step]})
    ctx = Context(example_inputs=wl.example_inputs(), train_data=wl.train_data(seed=0))
    recovered, _ = run_recipe(wl.model(), recipe, ctx, measure_steps=False)
    before, after = wl.evaluate(pruned, "val")["accuracy"], wl.evaluate(recovered, "val")["accuracy"]
    assert after > before + 0.05 and after > 0.9, (before, after)
