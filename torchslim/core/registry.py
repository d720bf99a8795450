"""Registry of transforms: one function per config type, refusing duplicates.

A *module-scope* transform is ``fn(module, config, ctx) -> nn.Module | None`` and is applied by the
walker to every selected module (return a replacement, the same module after an in-place change, or
``None`` when it does not apply). A *model-scope* transform is ``fn(model, config, select, ctx) ->
nn.Module`` and sees the whole model (structural pruning, calibration, distillation).

Example:
    >>> import torch.nn as nn
    >>> from dataclasses import dataclass
    >>> from torchslim.core.config import Config, register_config
    >>> @register_config("example-identity")
    ... @dataclass(frozen=True)
    ... class Identity(Config):
    ...     pass
    >>> @register_transform(Identity, scope="module")
    ... def _identity(module: nn.Module, config: Identity, ctx) -> nn.Module:
    ...     return module
    >>> lookup(Identity()).scope
    'module'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torchslim.core.config import Config
from torchslim.errors import RegistryError

Scope = Literal["module", "model"]


@dataclass(frozen=True)
class Transform:
    config_type: type[Config]
    fn: Callable
    scope: Scope


_TRANSFORMS: dict[type[Config], Transform] = {}


def register_transform(config_type: type[Config], *, scope: Scope = "module") -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the transform for ``config_type``; a second one is refused."""
    if scope not in ("module", "model"):
        raise RegistryError(f"scope must be 'module' or 'model', got {scope!r}")

    def deco(fn: Callable) -> Callable:
        if config_type in _TRANSFORMS:
            other = _TRANSFORMS[config_type].fn
            raise RegistryError(
                f"a transform for {config_type.__name__} is already registered "
                f"({other.__module__}.{other.__qualname__})"
            )
        _TRANSFORMS[config_type] = Transform(config_type, fn, scope)
        return fn

    return deco


def lookup(config: Config) -> Transform:
    """The transform registered for ``type(config)`` (or its nearest registered base)."""
    for cls in type(config).__mro__:
        if cls in _TRANSFORMS:
            return _TRANSFORMS[cls]
    names = ", ".join(sorted(c.__name__ for c in _TRANSFORMS)) or "(none)"
    raise RegistryError(f"no transform registered for {type(config).__name__}; registered: {names}")


def registered_transforms() -> dict[type[Config], Transform]:
    return dict(_TRANSFORMS)
