"""The techniques ``torchslim tune`` combines, as config classes, and how a point's values reach them.

A point's categorical choices name a technique (``prune: channels``, ``recovery: distill``,
``int8_method: int8-static``); the tables here map each choice to its config class. The numbers a
technique takes from a point are the search dimensions its config declares on its fields
(:mod:`torchslim.core.search`): the tuner builds ``Config(**values)`` through those declarations
(:func:`build`) and reads a recipe step back into point values the same way
(:func:`~torchslim.core.search.point_from_config`), so no field name is spelled here.

Example:
    >>> config = build(PRUNERS["channels"], {"channel_ratio": 0.25}, {"channel_round_to": (1, 8)}, scope="layer")
    >>> config.ratio, config.round_to
    (0.25, None)
    >>> step_data(config, {"include": ["^fc$"]})
    {'kind': 'channel-pruning', 'ratio': 0.25, 'select': {'include': ['^fc$']}}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torchslim.core.config import Config
from torchslim.core.search import config_from_point, search_dims
from torchslim.distillation import Distill
from torchslim.finetune import FineTune
from torchslim.pruning import GradualPruning, MagnitudePruning, WandaPruning
from torchslim.quantization import CastDtype, Int4WeightOnly, Int8Dynamic, Int8Static, Int8WeightOnly
from torchslim.structured import ChannelPruning, FoldBatchNorm, LayerDropping

__all__ = [
    "INT8",
    "PRUNERS",
    "RECOVERIES",
    "SEARCHED",
    "CastDtype",
    "ChannelPruning",
    "Distill",
    "FineTune",
    "FoldBatchNorm",
    "GradualPruning",
    "Int4WeightOnly",
    "Int8WeightOnly",
    "LayerDropping",
    "MagnitudePruning",
    "build",
    "step_data",
]

# ``prune`` choice -> technique (``none``: no pruning step).
PRUNERS: dict[str, type[Config]] = {"magnitude": MagnitudePruning, "wanda": WandaPruning, "channels": ChannelPruning}
# ``recovery`` / ``recovery_sparse`` choice -> technique (magnitude pruning recovers with GradualPruning).
RECOVERIES: dict[str, type[Config]] = {"finetune": FineTune, "distill": Distill}
# ``int8_method`` choice (the technique's registered kind, as studies store it) -> technique.
INT8: dict[str, type[Config]] = {c.kind: c for c in (Int8Static, Int8Dynamic, Int8WeightOnly)}
# Every config whose declared dimensions the tuner searches; a dimension's values come from the
# ``SearchSpace`` field of the same purpose (see ``space.SPACE_FIELDS``).
SEARCHED: tuple[type[Config], ...] = (
    LayerDropping,
    ChannelPruning,
    MagnitudePruning,
    WandaPruning,
    GradualPruning,
    Distill,
    Int4WeightOnly,
)


def build(config_type: type[Config], point: dict[str, Any], domains: dict[str, Any], **fixed: Any) -> Config:
    """``config_type`` with ``fixed`` and the values ``point`` gives its declared dimensions; a dimension
    the point leaves out (a space with one choice asks nothing) takes the first of ``domains[name]``.

    ``domains`` maps a dimension's name to its values in the space (a tuple of choices, or anything
    else for dimensions that a point always gives).
    """
    values = dict(point)
    for name in search_dims(config_type):
        choices = domains.get(name)
        if name not in values and isinstance(choices, tuple) and choices:
            values[name] = choices[0]
    return config_from_point(config_type, values, **fixed)


def step_data(config: Config, select: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipe step as plain data: ``kind``, the fields that differ from their defaults, ``select``."""
    data: dict[str, Any] = {"kind": config.kind}
    plain = config.to_dict()
    for f in dataclasses.fields(config):
        if f.default is dataclasses.MISSING or getattr(config, f.name) != f.default:
            data[f.name] = plain[f.name]
    return data | ({"select": select} if select else {})
