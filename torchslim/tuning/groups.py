"""Layer groups: layers that repeat across blocks (``encoder.layer.*.output.dense``) share one search
dimension; a group maps back to the ``Select.include`` regex of its layers."""

from __future__ import annotations

import re

__all__ = ["group_key", "group_regex"]


def group_key(name: str) -> str:
    """The layer group of a qualified module name: numeric components that are not the last become ``*``.

    Example:
        >>> group_key("encoder.layer.3.attention.self.query"), group_key("features.4")
        ('encoder.layer.*.attention.self.query', 'features.4')
    """
    parts = name.split(".")
    return ".".join("*" if p.isdigit() and i < len(parts) - 1 else p for i, p in enumerate(parts))


def group_regex(group: str) -> str:
    r"""A ``Select.include`` regex matching exactly the modules of ``group``.

    Example:
        >>> group_regex("encoder.layer.*.output.dense")
        '^encoder\\.layer\\.\\d+\\.output\\.dense$'
    """
    return "^" + r"\d+".join(re.escape(p) for p in group.split("*")) + "$"
