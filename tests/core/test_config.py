from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from torchslim.core.config import (
    Config,
    check_fraction,
    check_positive_int,
    config_from_dict,
    config_from_json,
    register_config,
    registered_configs,
)
from torchslim.core.select import Select
from torchslim.errors import ConfigError, RegistryError


@register_config("test-per-group")
@dataclass(frozen=True)
class PerGroupT(Config):
    size: int = 128

    def __post_init__(self) -> None:
        check_positive_int(self, "size")


@register_config("test-prune")
@dataclass(frozen=True)
class PruneT(Config):
    sparsity: float = 0.5
    scope: Literal["global", "layer"] = "global"
    granularity: PerGroupT = PerGroupT()
    names: tuple[str, ...] = ()
    limit: int | None = None

    def __post_init__(self) -> None:
        check_fraction(self, "sparsity")


def test_round_trip_dict_and_json():
    cfg = PruneT(sparsity=0.8, scope="layer", granularity=PerGroupT(64), names=("a", "b"), limit=3)
    d = cfg.to_dict()
    assert d == {
        "kind": "test-prune",
        "sparsity": 0.8,
        "scope": "layer",
        "granularity": {"kind": "test-per-group", "size": 64},
        "names": ["a", "b"],
        "limit": 3,
    }
    assert config_from_dict(d) == cfg
    assert config_from_json(cfg.to_json()) == cfg


def test_int_is_accepted_for_float_and_nested_kind_is_optional():
    cfg = config_from_dict({"kind": "test-prune", "sparsity": 0, "granularity": {"size": 32}})
    assert cfg.sparsity == 0.0 and isinstance(cfg.sparsity, float)
    assert cfg.granularity == PerGroupT(32)


def test_frozen_and_replace_does_not_mutate():
    cfg = PruneT()
    with pytest.raises(AttributeError):
        cfg.sparsity = 0.9  # type: ignore[misc]
    other = cfg.replace(sparsity=0.9)
    assert cfg.sparsity == 0.5 and other.sparsity == 0.9


def test_validation_message_says_what_to_use():
    with pytest.raises(ConfigError) as e:
        PruneT(sparsity=80)
    assert "sparsity" in str(e.value) and "fraction" in str(e.value)


def test_every_problem_listed_with_field_path():
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {
                "kind": "test-prune",
                "sparsity": "high",
                "scope": "everywhere",
                "granularity": {"size": "big", "colour": 1},
                "bogus": True,
            }
        )
    problems = e.value.problems
    assert "config.sparsity: expected a number, got 'high'" in problems
    assert any(p.startswith("config.scope: must be one of 'global', 'layer'") for p in problems)
    assert any(p.startswith("config.granularity.size: expected an integer") for p in problems)
    assert any(p.startswith("config.granularity.colour: unknown key") for p in problems)
    assert any(p.startswith("config.bogus: unknown key") for p in problems)
    assert len(problems) == 5


def test_out_of_range_after_types_pass_gets_path():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"kind": "test-prune", "sparsity": 1.5}, path="steps[2]")
    assert e.value.problems == [
        "steps[2].sparsity: must be in [0.0, 1.0), got 1.5; give a fraction such as 0.5, not a percentage"
    ]


def test_unknown_kind_lists_valid_kinds_and_never_imports():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"kind": "os.system", "cmd": "echo hi"})
    assert "unknown kind 'os.system'" in str(e.value)
    assert "test-prune" in str(e.value)


def test_bool_is_not_an_int_and_missing_kind():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"kind": "test-per-group", "size": True})
    assert "expected an integer" in str(e.value)
    with pytest.raises(ConfigError, match="missing 'kind'"):
        config_from_dict({"size": 3})


def test_duplicate_kind_refused():
    with pytest.raises(RegistryError, match="already registered"):

        @register_config("test-prune")
        @dataclass(frozen=True)
        class Other(Config):
            pass

    assert registered_configs()["test-prune"] is PruneT


def test_select_string_instead_of_list_is_explained():
    with pytest.raises(ConfigError, match="wrap it in a list"):
        Select(include="fc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid regex"):
        Select(include=("(",))
