"""DistillConfig / LossTerm: validation, defaults (Hinton's objective) and the recipe round trip."""

from __future__ import annotations

import pytest

from torchslim.distillation import Distill, DistillConfig, LossTerm
from torchslim.errors import ConfigError
from torchslim.recipes import recipe_from_dict


def test_default_objective_is_hintons_alpha_mix() -> None:
    terms = DistillConfig().resolved_terms()
    assert [(t.loss, t.weight) for t in terms] == [("kd", 0.9), ("ce", pytest.approx(0.1))]
    terms = DistillConfig(alpha=0.0).resolved_terms()
    assert [(t.loss, t.weight) for t in terms] == [("kd", 0.0), ("ce", 1.0)]
    assert Distill is DistillConfig and DistillConfig.kind == "distill"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0.5, "terms": (LossTerm("kd"),)}, "alpha"),
        ({"terms": (LossTerm("kd", 0.0),)}, "terms"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"warmup": 1.0}, "warmup"),
        ({"precision": "fp16"}, "precision"),
        ({"patience": -1}, "patience"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_fields_are_refused_with_their_name(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"DistillConfig.{field}"):
        DistillConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"loss": "nope"}, "loss"), ({"weight": -1.0}, "weight"), ({"student": "a..b"}, "student")],
)
def test_loss_term_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"LossTerm.{field}"):
        LossTerm(**kwargs)


def test_recipe_round_trip_with_terms() -> None:
    data = {
        "name": "kd",
        "steps": [
            {
                "kind": "distill",
                "temperature": 2,
                "epochs": 1,
                "terms": [{"loss": "kd", "weight": 0.5}, {"loss": "hidden", "student": "enc.0", "teacher": "enc.1"}],
            }
        ],
    }
    recipe = recipe_from_dict(data)
    cfg = recipe.steps[0].config
    assert isinstance(cfg, DistillConfig) and cfg.temperature == 2.0
    assert cfg.terms[1] == LossTerm("hidden", 1.0, "enc.0", "enc.1")
    assert recipe_from_dict(recipe.to_dict()).steps[0].config == cfg


def test_recipe_errors_list_every_problem_with_its_path() -> None:
    data = {"steps": [{"kind": "distill", "temperature": -1, "bogus": 1, "terms": [{"loss": "nope"}]}]}
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(data)
    text = str(e.value)
    assert "steps[0].bogus" in text and "steps[0].terms[0]" in text
