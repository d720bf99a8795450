"""``run_recipe``'s hooks: ``distill_eval`` watches the distill steps' evaluations, ``on_step_end`` every step,
and watching does not change the weights the recipe trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.core.context import Context
from torchslim.recipes import recipe_from_dict, run_recipe

# A pruning step (not distilled: no distill_eval call), then two distill steps training through dropout. Two
# batches an epoch: the first distill step evaluates at the end of each of its 2 epochs, the second (eval_every 1)
# after each of its 2 optimizer steps.
RECIPE = {
    "name": "watched",
    "seed": 3,
    "steps": [
        {"kind": "random-pruning", "sparsity": 0.5},
        {"kind": "distill", "epochs": 2, "lr": 0.01, "alpha": 0.5},
        {"kind": "distill", "epochs": 1, "lr": 0.01, "alpha": 0.5, "eval_every": 1},
    ],
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4)).train()


def _context() -> Context:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(2)]
    return Context(train_data=batches, seed=5)


def test_hooks_are_called_and_watching_keeps_the_weights():
    torch.set_num_threads(1)
    recipe = recipe_from_dict(RECIPE)
    log: list[tuple] = []

    def distill_eval(model: nn.Module) -> dict[str, float]:
        assert not model.training  # the trainer evaluates in eval mode
        with torch.random.fork_rng():
            model(torch.randn(2, 8))
        log.append(("eval",))
        return {"evaluation": float(len(log))}  # increasing: the trainer keeps the last weights

    def on_step_end(i: int, model: nn.Module) -> None:
        log.append(("step", i, model))

    ctx = _context()
    watched, run = run_recipe(
        _model(), recipe, ctx, measure_steps=False, progress=False, distill_eval=distill_eval, on_step_end=on_step_end
    )
    assert [e[:2] for e in log] == [("step", 0), ("eval",), ("eval",), ("step", 1), ("eval",), ("eval",), ("step", 2)]
    assert log[-1][2] is watched and len(run.steps) == 3
    assert ctx.distill_eval is None  # the caller's context is left as it was

    plain, _ = run_recipe(_model(), recipe, _context(), measure_steps=False, progress=False)
    for (name, a), b in zip(watched.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    # The comparison can fail: an evaluation that draws from the training's random state (no fork) moves
    # the dropout masks of the epochs after it.
    draws: list[float] = []

    def drawing(model: nn.Module) -> dict[str, float]:
        draws.append(torch.rand(1).item())
        return {"evaluation": float(len(draws))}  # increasing, as above: only the random state differs

    drawn, _ = run_recipe(_model(), recipe, _context(), measure_steps=False, progress=False, distill_eval=drawing)
    assert not torch.equal(drawn[0].weight, plain[0].weight)


def test_on_step_end_can_stop_the_run():
    recipe = recipe_from_dict(RECIPE)
    seen = []

    class Stop(Exception):
        pass

    def on_step_end(i: int, model: nn.Module) -> None:
        seen.append(i)
        if i == 0:
            raise Stop

    with pytest.raises(Stop):
        run_recipe(_model(), recipe, _context(), measure_steps=False, progress=False, on_step_end=on_step_end)
    assert seen == [0]  # no distill step ran
