"""``Select``: which modules a step touches, as data (regexes and type names, never a lambda).

Example:
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    >>> [n for n, _ in Select(types=("Conv2d", "Linear"), exclude=(r"^2$",)).modules(m)]
    ['0']
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch.nn as nn

from torchslim.core.config import Config, fail, register_config


def is_compressed(module: nn.Module) -> bool:
    """True for modules torchslim swapped in (they set ``torchslim_compressed = True``)."""
    return bool(getattr(module, "torchslim_compressed", False))


@register_config("select")
@dataclass(frozen=True)
class Select(Config):
    """Module filter.

    Args:
        include: regexes (``re.search``) on qualified names; empty means every name.
        exclude: regexes; a module matching any is skipped.
        types: class names (``"Linear"``, ``"Conv2d"``; matched on the class and its bases);
            empty means every type.

    Already-compressed modules and everything inside them are never selected.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in ("include", "exclude", "types"):
            value = getattr(self, field)
            if isinstance(value, str):
                fail(self, field, f"must be a list of strings, got the string {value!r}; wrap it in a list")
            object.__setattr__(self, field, tuple(value))
        for field in ("include", "exclude"):
            for pattern in getattr(self, field):
                try:
                    re.compile(pattern)
                except re.error as e:
                    fail(self, field, f"invalid regex {pattern!r}: {e}")

    def matches(self, name: str, module: nn.Module) -> bool:
        if is_compressed(module):
            return False
        if self.types:
            names = {c.__name__ for c in type(module).__mro__}
            if not names.intersection(self.types):
                return False
        if self.include and not any(re.search(p, name) for p in self.include):
            return False
        return not any(re.search(p, name) for p in self.exclude)

    def modules(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """Selected ``(qualified_name, module)`` pairs, skipping the insides of compressed modules."""
        inside: list[str] = []
        for name, module in model.named_modules():
            if any(name.startswith(p + ".") or p == "" for p in inside):
                continue
            if is_compressed(module):
                inside.append(name)
                continue
            if self.matches(name, module):
                yield name, module
