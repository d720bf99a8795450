"""Points of a :class:`~torchslim.tuning.space.SearchSpace` read from recipes, and the points next to a point.

What the search needs besides sampling:

* :func:`point_of`: the point whose recipe does what a given recipe does, or None. The built-in recipes
  the space can express become anchors (queued first), so a study is never worse than one of them.
* :func:`neighbours`: the points one step away along one dimension, grouped by what the step does
  (``compress`` more, ``recover`` more, ``other``, ``relax``): the local refinement around the best
  trial, and the replacement of a point the sampler proposes again.
* :func:`point_key`: a hashable key of a point (floats rounded), to tell points apart.

Both replay :meth:`SearchSpace.suggest` with :class:`Replay`, a stand-in trial that answers from a
dict, so a point has exactly the parameters ``suggest`` asks for (conditional ones only when used).
Written here because Optuna's ``FixedTrial`` neither fills in missing parameters nor rejects values
outside a distribution (it warns and uses them).

Example:
    >>> from torchslim.tuning.space import SearchSpace
    >>> space = SearchSpace(groups=("fc",), prune_methods=("none",), recovery=("none",), quant=("none", "bf16"))
    >>> [p["quant"] for p in neighbours(space, {"prune": "none", "quant": "none"})["compress"]]
    ['bf16']
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from torchslim.core.search import point_from_config
from torchslim.errors import TorchslimError
from torchslim.tuning.groups import group_regex
from torchslim.tuning.techniques import (
    INT8,
    PRUNERS,
    CastDtype,
    Distill,
    FineTune,
    FoldBatchNorm,
    GradualPruning,
    Int4WeightOnly,
    Int8WeightOnly,
    LayerDropping,
    MagnitudePruning,
)

if TYPE_CHECKING:
    from torchslim.recipes import Recipe, Step
    from torchslim.tuning.space import SearchSpace

__all__ = ["MOVES", "Replay", "neighbours", "point_key", "point_of"]

MOVES = ("compress", "recover", "other", "relax")
# Ordered categorical dimensions: a step moves to the next choice; any other categorical moves to every choice.
_ORDERED = (
    "quant",
    "channel_round_to",
    "channel_sparsity",
    "distill_epochs",
    "distill_lr",
    "int4_group_size",
    "embeddings",
)
_QUANT_RANK = {"none": 0, "bf16": 1, "int8": 2}


class OutOfSpace(Exception):
    """A value outside its dimension, or a parameter the point does not give."""


class Replay:
    """A stand-in Optuna trial: ``suggest_*`` answer from ``values``, checked against the distribution.

    Args:
        values: parameter values by Optuna name (extra names are ignored).
        fill: a missing parameter takes the first choice (categorical) or the low end (numbers);
            when False it raises :class:`OutOfSpace`.

    After ``space.suggest(replay)``, ``replay.params`` holds the parameters asked for and
    ``replay.dists`` their distributions (``("int", low, high)``, ``("float", low, high, step)``,
    ``("categorical", choices)``).

    Example:
        >>> r = Replay({"x": 3}, fill=True)
        >>> r.suggest_int("x", 0, 4), r.suggest_categorical("c", ["a", "b"]), r.params
        (3, 'a', {'x': 3, 'c': 'a'})
    """

    def __init__(self, values: dict[str, Any], *, fill: bool) -> None:
        self.values, self.fill = values, fill
        self.params: dict[str, Any] = {}
        self.dists: dict[str, tuple] = {}

    def _answer(self, name: str, dist: tuple, ok: bool, default: Any) -> Any:
        self.dists[name] = dist
        if name in self.values:
            if not ok:
                raise OutOfSpace(f"{name}={self.values[name]!r} is outside {dist}")
            value = self.values[name]
        elif self.fill:
            value = default
        else:
            raise OutOfSpace(f"{name}: no value")
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int) -> int:
        v = self.values.get(name)
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        return self._answer(name, ("int", low, high), ok, low)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float:
        v = self.values.get(name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and low - 1e-9 <= v <= high + 1e-9
        if ok and step:
            ok = abs((v - low) / step - round((v - low) / step)) < 1e-6
        return self._answer(name, ("float", low, high, step), ok, low)

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        v = self.values.get(name)
        ok = any(v == c and type(v) is type(c) for c in choices)
        return self._answer(name, ("categorical", tuple(choices)), ok, choices[0])


def replay(space: SearchSpace, values: dict[str, Any], *, fill: bool) -> Replay:
    """Run ``space.suggest`` on ``values``; the Replay holds the point's parameters (OutOfSpace when invalid)."""
    r = Replay(values, fill=fill)
    space.suggest(r)
    return r


def point_key(params: dict[str, Any]) -> tuple:
    """A hashable key of a point: sorted items, floats rounded to 6 decimals.

    Example:
        >>> point_key({"b": 0.1 + 0.2, "a": 1}) == point_key({"a": 1, "b": 0.3})
        True
    """
    return tuple(sorted((k, round(v, 6) if isinstance(v, float) else v) for k, v in params.items()))


# -- recipe -> point --------------------------------------------------------------------------


def _canonical(step: Step) -> tuple[Any, Any]:
    """A step's config and selection in a form where equal means "does the same"."""
    from torchslim.api import config_default_select
    from torchslim.core import Select

    config = step.config
    if isinstance(config, Distill):  # alpha=None means the default kd/ce weights
        config = dataclasses.replace(config, alpha=None, terms=config.resolved_terms())
    if getattr(config, "progress", None) is not None:  # a progress bar changes nothing in the model
        config = dataclasses.replace(config, progress=False)
    select = step.select if step.select is not None else config_default_select(step.config)
    return config, select if select is not None else Select()


def same_steps(a: Recipe, b: Recipe) -> bool:
    """Whether two recipes run the same steps, BatchNorm folding aside (it keeps a model's outputs, and
    the space adds it before quantizing whenever the model has BatchNorm)."""

    def steps(r: Recipe) -> list:
        return [_canonical(s) for s in r.steps if not isinstance(s.config, FoldBatchNorm)]

    return steps(a) == steps(b)


def _read_steps(space: SearchSpace, recipe: Recipe) -> dict[str, Any] | None:
    """Parameter values a recipe suggests (checked afterwards by rebuilding the recipe), or None.

    Which technique a step is decides the categorical choices (by config class); its numbers are the
    dimensions its config declares (:func:`~torchslim.core.search.point_from_config`).
    """
    prune_of = {cls: name for name, cls in PRUNERS.items()}
    values: dict[str, Any] = {"drop_layers": 0, "prune": "none", "recovery": "none", "recovery_sparse": "none"}
    values |= {"quant": "none", "channel_round_to": 1, "channel_sparsity": 0.0, "embeddings": "fp32"}
    bits: dict[str, int] = {}
    for step in recipe.steps:
        c = step.config
        declared = point_from_config(c)
        include = None if step.select is None else step.select.include
        if isinstance(c, FoldBatchNorm):
            continue
        if isinstance(c, LayerDropping):
            values["drop_layers"] = declared.get("drop_layers")  # None (another strategy): not in the space
        elif values["prune"] == "channels" and isinstance(c, (MagnitudePruning, GradualPruning)):
            values["channel_sparsity"] = declared.get("sparsity")  # thinning after channel pruning
        elif isinstance(c, GradualPruning):
            values |= {"prune": "magnitude", "recovery_sparse": "finetune"} | declared
        elif type(c) in prune_of:
            values |= {"prune": prune_of[type(c)]} | declared
        elif isinstance(c, FineTune):
            values["recovery"] = "finetune"
        elif isinstance(c, Distill):
            values |= {"recovery": "distill"} | declared
        elif isinstance(c, CastDtype) and c.dtype == "bfloat16":
            values["quant"] = "bf16"
        elif isinstance(c, Int8WeightOnly) and step.select is not None and step.select.types == ("Embedding",):
            values["embeddings"] = "int8"  # the embedding tables alone (beside int4 or selected int8 steps)
        elif isinstance(c, (Int4WeightOnly, *INT8.values())):
            n = 4 if isinstance(c, Int4WeightOnly) else 8
            if n == 4:
                values |= {"quant": "int4"} | declared
            else:
                values |= {"int8_method": c.kind} | ({} if values["quant"] == "int4" else {"quant": "int8"})
                if include is None and getattr(c, "embeddings", False):  # the technique's default takes them
                    values["embeddings"] = "int8"
            for g in space.groups:
                if include is None or group_regex(g) in include:
                    bits.setdefault(g, n)
        else:
            return None
    prefix = "int4_bits:" if values["quant"] == "int4" else "bits:"
    values |= {prefix + g: bits.get(g, 32) for g in space.groups}
    return values


def point_of(space: SearchSpace, recipe: Recipe) -> dict[str, Any] | None:
    """The point (Optuna parameters) whose recipe runs the same steps as ``recipe``, or None.

    Exact or nothing: the recipe of the point is rebuilt and compared step by step (configs with their
    defaults filled in, selections resolved to the technique's default; BatchNorm folding aside, see
    :func:`same_steps`). A value off the space's grid, a technique or option the space does not search,
    or a different order gives None.

    Example:
        >>> from torchslim.recipes import builtin_recipes
        >>> from torchslim.tuning.space import SearchSpace
        >>> space = SearchSpace(groups=("fc",), quant=("none", "bf16", "int8"))
        >>> point_of(space, builtin_recipes()["bf16"])
        {'prune': 'none', 'recovery': 'none', 'quant': 'bf16'}
        >>> point_of(space, builtin_recipes()["int8-qat"]) is None
        True
    """
    try:
        values = _read_steps(space, recipe)
        if values is None:
            return None
        params = replay(space, values, fill=False).params
        return params if same_steps(space.recipe(params), recipe) else None
    except (OutOfSpace, TorchslimError, AttributeError, TypeError, ValueError):
        return None  # not expressible: an option outside the space, or a point whose recipe is invalid


# -- neighbours -------------------------------------------------------------------------------


def _adjacent(name: str, dist: tuple, value: Any) -> list[Any]:
    if dist[0] == "int":
        return [v for v in (value + 1, value - 1) if dist[1] <= v <= dist[2]]
    if dist[0] == "float":
        _, low, high, step = dist
        step = step or (high - low) / 10
        return [round(v, 6) for v in (value + step, value - step) if low - 1e-9 <= v <= high + 1e-9]
    choices = list(dist[1])
    i = choices.index(value)
    if name in _ORDERED or name.startswith(("bits:", "int4_bits:")):
        return [choices[j] for j in (i + 1, i - 1) if 0 <= j < len(choices)]
    return [c for c in choices if c != value]


def _direction(name: str, old: Any, new: Any) -> str:
    """What a step along one dimension does: compress, recover, other or relax."""
    if name in ("drop_layers", "channel_ratio", "sparsity", "channel_sparsity"):
        return "compress" if new > old else "relax"
    if name.startswith(("bits:", "int4_bits:")):
        return "compress" if new < old else "relax"
    if name == "embeddings":
        return "compress" if new == "int8" else "relax"
    if name == "quant" and old in _QUANT_RANK and new in _QUANT_RANK:
        return "compress" if _QUANT_RANK[new] > _QUANT_RANK[old] else "relax"
    if name in ("recovery", "recovery_sparse"):
        return "relax" if new == "none" else "recover"
    if name == "distill_epochs":
        return "recover" if new > old else "relax"
    if name == "distill_lr":
        return "recover"
    return "other"


def neighbours(space: SearchSpace, params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The points one step from ``params`` along one dimension, by :data:`MOVES` kind.

    A step is the next value of a number (one grid step) or of an ordered choice (bits, quantization
    none → bf16 → int8, distillation epochs and learning rate, rounding), or any other value of an
    unordered one (pruning method, int8 technique); ``recover`` lists the steps that keep the recovery
    method first. Parameters a step makes necessary take their first
    choice (e.g. bf16 → int8 puts every group at 8 bits); those it makes unused are dropped.

    Example:
        >>> from torchslim.tuning.space import SearchSpace
        >>> space = SearchSpace(groups=("fc",), prune_methods=("channels",), channel_ratio=(0.5, 0.75, 0.125),
        ...                     channel_round_to=(1,), recovery=("none",), quant=("int8",))
        >>> moves = neighbours(space, {"prune": "channels", "channel_ratio": 0.5, "quant": "int8",
        ...                            "int8_method": "int8-dynamic", "bits:fc": 8})
        >>> [p["channel_ratio"] for p in moves["compress"]], [p["bits:fc"] for p in moves["relax"]]
        ([0.625], [32])
    """
    base = replay(space, params, fill=True)
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in MOVES}
    seen = {point_key(base.params)}
    for name, dist in base.dists.items():
        old = base.params[name]
        for new in _adjacent(name, dist, old):
            try:
                point = replay(space, {**base.params, name: new}, fill=True).params
            except OutOfSpace:
                continue
            key = point_key(point)
            if key not in seen:
                seen.add(key)
                out[_direction(name, old, new)].append(point)
    # More of the same recovery (epochs, learning rate) before another recovery method: a near miss is
    # closer to the budget with longer distillation than with a switch to plain fine-tuning.
    out["recover"].sort(key=lambda p: p.get("recovery") != base.params.get("recovery"))
    return out
