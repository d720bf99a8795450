"""``forward_hooks``: hooks registered for a ``with`` block, all removed on exit (normal, raised, half-registered)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.calibration.hooks import forward_hooks


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_forward_hooks_run_in_the_block_and_are_removed_after() -> None:
    m = _model()
    seen: list[str] = []
    pairs = [(m[0], lambda mod, args, out: seen.append("0")), (m[2], lambda mod, args, out: seen.append("2"))]
    with forward_hooks(pairs) as handles:
        assert len(handles) == 2 and _hook_count(m) == 2
        m(torch.ones(1, 3))
    assert seen == ["0", "2"] and _hook_count(m) == 0
    m(torch.ones(1, 3))
    assert seen == ["0", "2"]  # removed: the next forward calls nothing


def test_pre_hooks_see_and_may_replace_the_inputs() -> None:
    m = _model()
    with forward_hooks([(m[2], lambda mod, args: (torch.zeros_like(args[0]),))], pre=True):
        assert len(m[2]._forward_pre_hooks) == 1 and not m[2]._forward_hooks
        assert torch.equal(m(torch.ones(1, 3)), m[2].bias.detach().unsqueeze(0))
    assert _hook_count(m) == 0
    assert not torch.equal(m(torch.ones(1, 3)), m[2].bias.detach().unsqueeze(0))


def test_kwargs_hooks_receive_the_keyword_arguments() -> None:
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
            return x * scale

    block, got = Scaled(), {}

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        got["pre"] = kwargs["scale"]

    def post(mod: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        got["post"] = (kwargs["scale"], out.sum().item())

    with forward_hooks([(block, pre)], pre=True, with_kwargs=True), forward_hooks([(block, post)], with_kwargs=True):
        block(torch.ones(2), scale=3.0)
    assert got == {"pre": 3.0, "post": (3.0, 6.0)}
    assert _hook_count(block) == 0


def test_hooks_are_removed_when_the_block_raises() -> None:
    m = _model()
    with pytest.raises(RuntimeError, match="boom"):
        with (
            forward_hooks([(m[0], lambda mod, args, out: None)]),
            forward_hooks([(m[2], lambda mod, args: None)], pre=True),
        ):
            assert _hook_count(m) == 2
            raise RuntimeError("boom")
    assert _hook_count(m) == 0


def test_hooks_are_removed_when_a_hook_raises_in_the_forward() -> None:
    m = _model()

    def fail(mod: nn.Module, args: tuple) -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"), forward_hooks([(m[0], fail)], pre=True):
        m(torch.ones(1, 3))
    assert _hook_count(m) == 0


def test_hooks_registered_before_a_failure_part_way_are_removed() -> None:
    m = _model()

    def pairs():
        yield m[0], lambda mod, args, out: None
        yield m[2], lambda mod, args, out: None
        raise KeyError("no such layer")

    with pytest.raises(KeyError, match="no such layer"), forward_hooks(pairs()):
        pytest.fail("the body must not run when registering failed")
    assert _hook_count(m) == 0

    not_a_module = object()
    with pytest.raises(AttributeError), forward_hooks([(m[0], lambda mod, args, out: None), (not_a_module, print)]):
        pytest.fail("the body must not run when registering failed")
    assert _hook_count(m) == 0
