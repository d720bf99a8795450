from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import ConfigError, UnsafeInputError, UsageError
from torchslim.recipes import builtin_recipes, load_recipe, recipe_from_dict, run_recipe


def cnn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_yaml_round_trip(tmp_path):
    r = recipe_from_dict(
        {
            "name": "r",
            "description": "d",
            "seed": 3,
            "steps": [
                {"kind": "fold-batchnorm", "name": "fold"},
                {"kind": "cast-dtype", "dtype": "float16", "select": {"types": ["Linear"]}},
            ],
        }
    )
    p = tmp_path / "r.yaml"
    p.write_text(r.to_yaml())
    again = load_recipe(p)
    assert again == r
    assert again.steps[1].select == ts.Select(types=("Linear",))
    assert again.steps[0].label == "fold" and again.steps[1].label == "cast-dtype"


def test_every_problem_with_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "name: bad\nsteps:\n"
        "  - kind: cast-dtype\n    dtype: int3\n"
        "  - kind: nope\n"
        "  - kind: finetune\n    epochs: -1\n    lr: fast\n"
        "  - kind: fold-batchnorm\n    select: {types: Linear}\n"
        "colour: red\n"
    )
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    problems = e.value.problems
    assert any(x.startswith("colour: unknown key") for x in problems)
    assert any(x.startswith("steps[0].dtype: must be one of") for x in problems)
    assert any(x.startswith("steps[1].kind: unknown kind 'nope'") for x in problems)
    assert any(x.startswith("steps[2].lr: expected a number") for x in problems)
    assert any(x.startswith("steps[3].select.types: expected a list") for x in problems)
    assert e.value.exit_code == 3


def test_range_error_in_recipe_has_path():
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"steps": [{"kind": "finetune", "epochs": 0}]})
    assert e.value.problems == ["steps[0].epochs: must be a positive integer, got 0"]


def test_python_tags_never_execute(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_recipe(p)
    assert not marker.exists()


def test_unknown_name_lists_builtins_and_big_file_refused(tmp_path):
    with pytest.raises(UsageError) as e:
        load_recipe("no-such-recipe")
    assert "default" in str(e.value)
    big = tmp_path / "big.yaml"
    big.write_text("#" * 1_000_001)
    with pytest.raises(UnsafeInputError):
        load_recipe(big)


def test_builtins_all_valid_and_described():
    recipes = builtin_recipes()
    assert "default" in recipes
    assert all(r.description and r.steps for r in recipes.values())


def test_run_recipe_measures_each_step_and_keeps_outputs():
    m = cnn()
    x = torch.randn(8, 1, 8, 8)
    ref = m(x).detach()
    ctx = ts.Context(example_inputs=(x,), eval_fn=lambda model: {"mean_out": float(model(x).detach().mean())})
    recipe = recipe_from_dict({"name": "t", "steps": [{"kind": "fold-batchnorm"}, {"kind": "cast-dtype"}]})
    m, run = run_recipe(m, recipe, ctx, latency_runs=2)
    assert [s.name for s in run.steps] == ["fold-batchnorm", "cast-dtype"]
    base, fold, cast = run.baseline, run.steps[0].report, run.steps[1].report
    assert base.params - fold.params == 8  # BatchNorm's weight and bias are gone, conv gained a bias of 4
    assert cast.size_bytes < 0.6 * fold.size_bytes
    assert run.steps[0].events == ["fold-batchnorm: folded 1 BatchNorm layer(s)"]
    assert torch.allclose(m(x), ref, atol=0.05)
    d = run.to_dict()
    assert d["diff"]["size_ratio"] == cast.size_bytes / base.size_bytes
    assert run.to_markdown().count("\n") == 4


def test_run_recipe_without_measurement():
    _, run = run_recipe(cnn(), load_recipe("fold-bn"), measure_steps=False)
    assert run.baseline is None and run.steps[0].report is None
