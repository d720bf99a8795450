"""One protocol for every module a technique swaps in and ``ts.load`` rebuilds.

A swapped module class (int8, int4, static int8, low-rank, split attention, ...) implements

- ``torchslim_spec(self) -> dict``: its constructor arguments as JSON values (shapes and flags, never
  tensors), and
- ``from_spec(cls, spec) -> module`` (a classmethod): an empty module of those shapes, values validated
  and never executed,

and is registered with :func:`register_spec_module` under a stable kind name (its class name unless
given), which artifacts store as ``spec["class"]``. :func:`module_spec` gives
``{"class": kind, **module.torchslim_spec()}`` and :func:`module_from_spec` builds it back; every
structure replay that recreates a swapped module goes through these two, and ``ts.load`` then fills
the empty module from safetensors. Only registered kinds are ever built (an allow-list: a crafted
structure log cannot name an arbitrary class).

Example:
    >>> import torch.nn as nn
    >>> @register_spec_module
    ... class Scale(nn.Module):
    ...     def __init__(self, n: int) -> None:
    ...         super().__init__()
    ...         self.n = n
    ...     def torchslim_spec(self):
    ...         return {"n": self.n}
    ...     @classmethod
    ...     def from_spec(cls, spec):
    ...         return cls(int(spec["n"]))
    >>> module_spec(Scale(3))
    {'class': 'Scale', 'n': 3}
    >>> module_from_spec({"class": "Scale", "n": 3}).n
    3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch.nn as nn

__all__ = ["SpecModule", "module_from_spec", "module_spec", "register_spec_module", "spec_kinds"]


@runtime_checkable
class SpecModule(Protocol):
    """A module ``ts.load`` can rebuild empty from a JSON spec (see the module docstring)."""

    def torchslim_spec(self) -> dict[str, Any]: ...

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> nn.Module: ...


_KINDS: dict[str, type[nn.Module]] = {}
_KIND_OF: dict[type[nn.Module], str] = {}

M = TypeVar("M", bound=type[nn.Module])


def register_spec_module(cls: M | None = None, *, kind: str | None = None) -> M | Callable[[M], M]:
    """Class decorator: let :func:`module_from_spec` build ``cls`` under ``kind`` (default: the class name).

    Raises:
        TypeError: ``cls`` lacks ``torchslim_spec`` or ``from_spec``, or ``kind`` already names another class.
    """

    def register(c: M) -> M:
        name = kind or c.__name__
        if not (callable(getattr(c, "torchslim_spec", None)) and callable(getattr(c, "from_spec", None))):
            raise TypeError(f"{c.__name__} needs torchslim_spec() and a from_spec(spec) classmethod")
        old = _KINDS.get(name, c)
        if old is not c and (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__):  # not a redefinition
            raise TypeError(f"module spec kind {name!r} is already registered for {_KINDS[name].__name__}")
        _KINDS[name] = c
        _KIND_OF[c] = name
        return c

    return register(cls) if cls is not None else register


def spec_kinds() -> dict[str, type[nn.Module]]:
    """The registered kinds and their classes (a copy)."""
    return dict(_KINDS)


def module_spec(module: nn.Module) -> dict[str, Any]:
    """``{"class": kind, **module.torchslim_spec()}`` for a module of a registered class.

    Raises:
        TypeError: the module's class is not registered.
    """
    kind = _KIND_OF.get(type(module))
    if kind is None:
        raise TypeError(f"no spec for {type(module).__name__}: register it with register_spec_module")
    return {"class": kind, **module.torchslim_spec()}  # type: ignore[operator]


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
    """An empty module of the registered kind ``spec["class"]``, from the rest of ``spec``.

    Raises:
        ValueError: an unknown kind or a malformed spec (missing or mistyped fields).
    """
    if not isinstance(spec, dict) or spec.get("class") not in _KINDS:
        raise ValueError(f"unknown module spec {str(spec)[:200]}")
    args = {k: v for k, v in spec.items() if k != "class"}
    try:
        return _KINDS[spec["class"]].from_spec(args)  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed module spec {str(spec)[:200]}: {e}") from None
