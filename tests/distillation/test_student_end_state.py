"""The student leaves ``train_distill`` as the same weights reloaded would be: no gradients, eval mode.

Leftover float32 gradients on parameters later cast to bf16 made Dynamo break the graph at each of them
(its "dtype mismatch between tensor and its gradient" rule), so a compiled model differed in the last
bits from the same weights reloaded in a fresh process.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounter

from torchslim.api import compress_
from torchslim.distillation import DistillConfig, train_distill
from torchslim.quantization import CastDtype


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    student = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    return student, teacher


def test_student_leaves_without_gradients_and_keeps_requires_grad():
    student, teacher = _pair()
    student[0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    before = [p.detach().clone() for p in student.parameters()]
    run = train_distill(student, teacher, lambda: [(x, y)], DistillConfig(epochs=2, lr=1e-2), progress=False)
    assert run.steps == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, student.parameters(), strict=True))  # it trained
    assert all(p.grad is None for p in student.parameters())
    assert [p.requires_grad for p in student.parameters()] == [False, True, True, True, True, True]
    assert not student.training


def test_bf16_cast_student_compiles_in_one_graph():
    student, teacher = _pair()
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    train_distill(student, teacher, lambda: [(x, y)], DistillConfig(epochs=1), progress=False)
    compress_(student, CastDtype("bfloat16"))  # casts the parameters' data in place, not their .grad
    torch._dynamo.reset()
    counter = CompileCounter()
    with torch.no_grad():
        torch.compile(student, backend=counter)(x)
    assert counter.frame_count == 1
