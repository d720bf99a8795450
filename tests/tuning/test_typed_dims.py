"""Typed tuning: the search dimensions the techniques' configs declare, and how the tuner uses them.

A renamed or retyped config field must fail here, not in the middle of a study.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import pytest

from torchslim.core.config import Config, convert_value
from torchslim.core.search import Choice, Count, Grid, config_from_point, point_from_config, search_dims, searchable
from torchslim.tuning.space import SPACE_FIELDS, SearchSpace
from torchslim.tuning.techniques import INT8, PRUNERS, RECOVERIES, SEARCHED


def _values(dim):
    if isinstance(dim, Count):
        return [dim.low + 1, dim.low + 2]
    return list(dim.values)


@pytest.mark.parametrize("config_type", SEARCHED, ids=lambda c: c.kind)
def test_every_declared_dimension_names_a_field_with_values_of_its_type(config_type):
    dims = search_dims(config_type)
    assert dims, f"{config_type.kind} declares no search dimension but the tuner searches it"
    hints = typing.get_type_hints(config_type)
    fields = {f.name for f in dataclasses.fields(config_type)}
    for name, dim in dims.items():
        assert dim.field in fields
        for value in _values(dim):
            problems: list[str] = []
            convert_value(value, hints[dim.field], f"{config_type.kind}.{dim.field}", problems)
            assert not problems, problems
            config = config_from_point(config_type, {name: value})  # its own validation accepts the value
            expected = None if getattr(dim, "unset", object()) == value else value
            assert getattr(config, dim.field) == expected
            assert point_from_config(config)[name] == value


def test_space_fields_cover_exactly_the_declared_dimensions():
    declared = {name: dim for c in SEARCHED for name, dim in search_dims(c).items()}
    assert set(SPACE_FIELDS) == set(declared)
    space_fields = {f.name for f in dataclasses.fields(SearchSpace)}
    assert set(SPACE_FIELDS.values()) <= space_fields
    default = SearchSpace()
    for name, dim in declared.items():  # the space's defaults are the declarations'
        value = getattr(default, SPACE_FIELDS[name])
        if isinstance(dim, Grid):
            assert value == dim.range
        elif isinstance(dim, Choice):
            assert value == dim.values
        else:
            assert isinstance(value, int)


def test_a_dimension_shared_by_several_configs_is_declared_the_same_everywhere():
    seen: dict[str, object] = {}
    for c in SEARCHED:
        for name, dim in search_dims(c).items():
            plain = dataclasses.replace(dim, field="")
            assert seen.setdefault(name, plain) == plain, name


def test_choice_tables_name_registered_techniques():
    for table in (PRUNERS, RECOVERIES, INT8):
        for config_type in table.values():
            assert issubclass(config_type, Config) and config_type.kind
    assert all(kind == c.kind for kind, c in INT8.items())


def test_a_renamed_field_keeps_its_dimension_and_its_stored_name():
    @dataclass(frozen=True)
    class Before(Config):
        ratio: float = searchable(0.5, Grid(0.25, 0.75, 0.25, name="channel_ratio"))

    @dataclass(frozen=True)
    class After(Config):
        fraction: float = searchable(0.5, Grid(0.25, 0.75, 0.25, name="channel_ratio"))

    point = {"channel_ratio": 0.25}
    assert config_from_point(Before, point).ratio == config_from_point(After, point).fraction == 0.25
    assert point_from_config(After(fraction=0.75)) == {"channel_ratio": 0.75}


def test_every_technique_of_the_space_builds_from_a_point():
    import torch.nn as nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    space = SearchSpace.for_model(model, has_train_data=True, quant=("none", "bf16", "int8"))
    base = {"bits:0": 8, "bits:4": 8}
    points = [
        {"prune": "channels", "channel_ratio": 0.5, "channel_round_to": 8, "channel_sparsity": 0.5,
         "recovery": "distill", "distill_epochs": 20, "distill_lr": 0.002, "quant": "int8"} | base,
        {"prune": "magnitude", "sparsity": 0.5, "recovery_sparse": "finetune", "quant": "bf16"},
        {"prune": "wanda", "sparsity": 0.3, "quant": "none"},
        {"prune": "none", "recovery": "finetune", "quant": "int8"} | base,
    ]  # fmt: skip
    kinds = set()
    for point in points:
        recipe = space.recipe(point)
        kinds |= {s.config.kind for s in recipe.steps}
        assert space.point_of(recipe) == point  # read back through the same declarations
    assert {"channel-pruning", "gradual-pruning", "distill", "finetune", "int8-static", "cast-dtype"} <= kinds
    channel = space.recipe(points[0]).steps[0].config
    assert (channel.ratio, channel.round_to) == (0.5, 8)
