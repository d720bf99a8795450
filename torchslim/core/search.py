"""Search dimensions declared on a technique's config, next to the fields they vary.

A config field that a tuner may vary carries its dimension in the dataclass field's metadata::

    ratio: float = searchable(0.5, Grid(0.0625, 0.875, 0.03125, name="channel_ratio"))

The dimension says over which values (:class:`Choice`: a list; :class:`Grid`: ``low..high`` in
steps; :class:`Count`: whole numbers from ``low`` up to a bound the model sets) and under which name a
point of the search stores the value (``name``; the field's own name when empty). The stored name is
part of a study's data, so it stays when a field is renamed: the declaration moves with the field and
:func:`config_from_point` / :func:`point_from_config` keep working.

Example:
    >>> from dataclasses import dataclass
    >>> from torchslim.core.config import Config
    >>> @dataclass(frozen=True)
    ... class Thin(Config):
    ...     amount: float = searchable(0.5, Grid(0.25, 0.75, 0.25, name="thin"))
    ...     every: int | None = searchable(None, Choice((1, 2, 4), unset=1))
    >>> [(d.name, d.field) for d in search_dims(Thin).values()]
    [('thin', 'amount'), ('every', 'every')]
    >>> config_from_point(Thin, {"thin": 0.75, "every": 1})
    Thin(amount=0.75, every=None)
    >>> point_from_config(Thin(amount=0.25, every=4))
    {'thin': 0.25, 'every': 4}
    >>> Grid(0.25, 0.75, 0.25).values
    (0.25, 0.5, 0.75)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Choice", "Count", "Dim", "Grid", "config_from_point", "point_from_config", "search_dims", "searchable"]

_KEY = "search"


class _Unset:
    """No point value stands for the field's None."""

    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (in this order: the first is the default of a point that leaves it open).

    Args:
        values: the choices.
        name: the parameter's name in a point (default: the field's name).
        unset: the point value that stands for the field's ``None`` (e.g. rounding to 1: no rounding).
        always: a point asks for it even when a space offers one choice (otherwise the config's
            default is used and the point leaves it out).
    """

    values: tuple[Any, ...]
    name: str = ""
    unset: Any = _UNSET
    always: bool = False
    field: str = ""


@dataclass(frozen=True)
class Grid:
    """A number in ``low..high`` in steps of ``step`` (a float dimension on a grid)."""

    low: float
    high: float
    step: float
    name: str = ""
    field: str = ""

    @property
    def range(self) -> tuple[float, float, float]:
        return (self.low, self.high, self.step)

    @property
    def values(self) -> tuple[float, ...]:
        """The grid's points, rounded to 6 decimals."""
        n = round((self.high - self.low) / self.step)
        return tuple(round(self.low + i * self.step, 6) for i in range(n + 1))


@dataclass(frozen=True)
class Count:
    """A whole number from ``low`` up to a bound the model sets (e.g. how many blocks there are);
    ``low`` in a point means the technique is not applied."""

    low: int = 0
    name: str = ""
    field: str = ""


Dim = Choice | Grid | Count


def searchable(default: Any, dim: Dim) -> Any:
    """A dataclass field with ``default`` that a tuner may vary along ``dim``."""
    return dataclasses.field(default=default, metadata={_KEY: dim})


def search_dims(config_type: type) -> dict[str, Dim]:
    """The declared dimensions of a config class, by their name in a point, in field order; each one
    knows its ``field``."""
    out: dict[str, Dim] = {}
    for f in dataclasses.fields(config_type):
        dim = f.metadata.get(_KEY)
        if dim is not None:
            out[dim.name or f.name] = dataclasses.replace(dim, name=dim.name or f.name, field=f.name)
    return out


def config_from_point(config_type: type, point: dict[str, Any], **fixed: Any) -> Any:
    """``config_type(**fixed, **values)``: the declared dimensions that ``point`` gives, by field."""
    values = dict(fixed)
    for name, dim in search_dims(config_type).items():
        if name in point:
            value = point[name]
            unset = getattr(dim, "unset", _UNSET)
            values[dim.field] = None if unset is not _UNSET and value == unset else value
    return config_type(**values)


def point_from_config(config: Any) -> dict[str, Any]:
    """The declared dimensions of ``config`` as point values (a field at ``None`` gives the ``unset``
    value, or nothing when the dimension has none)."""
    out: dict[str, Any] = {}
    for name, dim in search_dims(type(config)).items():
        value = getattr(config, dim.field)
        if value is None:
            unset = getattr(dim, "unset", _UNSET)
            if unset is _UNSET:
                continue
            value = unset
        out[name] = value
    return out
