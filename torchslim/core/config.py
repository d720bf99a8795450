"""Frozen, validated configuration dataclasses with a JSON/YAML round trip through an allow-list.

Every technique is a ``Config`` subclass registered under a ``kind`` name. ``config_from_dict`` only
ever builds classes from that allow-list, checks every field's type, rejects unknown keys, and
reports *all* problems at once with their field paths; it never imports or executes anything named
in the data.

Example:
    >>> from dataclasses import dataclass
    >>> @register_config("example-scale")
    ... @dataclass(frozen=True)
    ... class Scale(Config):
    ...     factor: float = 1.0
    ...     def __post_init__(self) -> None:
    ...         check_range(self, "factor", 0.0, 10.0)
    >>> config_from_dict({"kind": "example-scale", "factor": 2}).factor
    2.0
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from torchslim.errors import ConfigError, RegistryError

_CONFIGS: dict[str, type[Config]] = {}

C = TypeVar("C", bound=type)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every technique config: frozen, validated in ``__post_init__``, JSON-serialisable."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, ``kind`` first; nested configs become nested dicts."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "config") -> Config:
        """Build this config (or the registered subclass named by ``kind``) from plain data."""
        return config_from_dict(data, path=path, expected=cls)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (the original is never mutated)."""
        return dataclasses.replace(self, **changes)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def register_config(kind: str):
    """Class decorator: put a Config subclass on the allow-list under ``kind`` (unique)."""

    def deco(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Config)):
            raise RegistryError(f"{cls!r} is not a torchslim Config subclass")
        if kind in _CONFIGS and _CONFIGS[kind] is not cls:
            raise RegistryError(f"config kind {kind!r} is already registered by {_CONFIGS[kind].__qualname__}")
        cls.kind = kind
        _CONFIGS[kind] = cls
        return cls

    return deco


def registered_configs() -> dict[str, type[Config]]:
    """A copy of the allow-list: kind name -> config class."""
    return dict(_CONFIGS)


# ---------------------------------------------------------------- validation helpers (for __post_init__)


def fail(obj: Config, field: str, message: str) -> None:
    raise ConfigError(f"{type(obj).__name__}.{field}: {message}", [f"{field}: {message}"])


def check_range(
    obj: Config,
    field: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (bounds optionally open), finite."""
    value = getattr(obj, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        msg = f"must be in {lb}{low}, {high}{hb}, got {value!r}"
        fail(obj, field, msg + (f"; {hint}" if hint else ""))


def check_fraction(obj: Config, field: str, *, hint: str = "", allow_one: bool = False) -> None:
    """A fraction is a float in [0, 1) (or [0, 1] with ``allow_one``)."""
    default_hint = "give a fraction such as 0.5, not a percentage" if not hint else hint
    check_range(obj, field, 0.0, 1.0, high_open=not allow_one, hint=default_hint)


def check_positive_int(obj: Config, field: str) -> None:
    value = getattr(obj, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        fail(obj, field, f"must be a positive integer, got {value!r}")


# ---------------------------------------------------------------- from plain data


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        if issubclass(tp, Config) and tp.kind:
            return f"{tp.kind!r} mapping"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(tp.__name__, tp.__name__)
    return str(tp)


def convert_value(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the converted value (problems appended)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for opt in options:
            if opt is type(None):
                continue
            trial: list[str] = []
            out = convert_value(value, opt, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
        return None
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            problems.append(f"{path}: must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return ()
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                problems.append(f"{path}: expected {len(args)} items, got {len(value)}")
                return tuple(value)
            return tuple(
                convert_value(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [convert_value(v, item, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        _, vt = get_args(tp) or (str, Any)
        return {str(k): convert_value(v, vt, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return None
        return build_config(value, path, tp, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    problems.append(f"{path}: unsupported field type {tp!r}")
    return value


def build_config(data: dict[str, Any], path: str, expected: type[Config], problems: list[str]) -> Config | None:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind is None:
        if expected is Config or not expected.kind:
            problems.append(f"{path}: missing 'kind'; one of: {', '.join(sorted(_CONFIGS))}")
            return None
        cls = expected
    else:
        if not isinstance(kind, str) or kind not in _CONFIGS:
            problems.append(f"{path}.kind: unknown kind {kind!r}; valid kinds: {', '.join(sorted(_CONFIGS))}")
            return None
        cls = _CONFIGS[kind]
        if not issubclass(cls, expected):
            problems.append(f"{path}.kind: {kind!r} is not a {expected.__name__}")
            return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    before = len(problems)
    for key in data:
        if key not in fields:
            problems.append(f"{path}.{key}: unknown key for {cls.kind!r}; valid keys: {', '.join(fields) or '(none)'}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert_value(data[name], hints[name], f"{path}.{name}", problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{path}.{name}: required field missing")
    if len(problems) > before:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        problems.extend(f"{path}.{p}" for p in (e.problems or [str(e)]))
    except (TypeError, ValueError) as e:
        problems.append(f"{path}: {e}")
    return None


def config_from_dict(data: Any, path: str = "config", expected: type[Config] = Config) -> Config:
    """Build a registered config from plain data; raise ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("invalid config", [f"{path}: expected a mapping, got {data!r}"])
    cfg = build_config(data, path, expected, problems)
    if problems or cfg is None:
        raise ConfigError("invalid config", problems)
    return cfg


def config_from_json(text: str) -> Config:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    return config_from_dict(data)
