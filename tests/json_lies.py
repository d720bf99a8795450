"""JSON that lies: generated JSON values (hypothesis) and one value of a valid document replaced by one.

Shared by the fuzz tests of the artifact reader and of the Hugging Face folder reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

__all__ = ["JSON", "json_paths", "replace_at", "replace_one_value"]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def json_paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (tuple of keys/indices) inside a JSON value, the root included.

    >>> list(json_paths({"a": [1, 2]}))
    [(), ('a',), ('a', 0), ('a', 1)]
    """
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from json_paths(value, (*prefix, key))


def replace_at(obj: Any, path: tuple, value: Any) -> Any:
    """``obj`` with the value at ``path`` replaced by ``value`` (in place below the root; the root path
    returns ``value``).

    >>> replace_at({"a": [1, 2]}, ("a", 1), None)
    {'a': [1, None]}
    """
    if not path:
        return value
    obj[path[0]] = replace_at(obj[path[0]], path[1:], value)
    return obj


def replace_one_value(data: Any, obj: Any) -> Any:
    """``obj`` with one value anywhere (drawn from hypothesis' ``data``) replaced by drawn :data:`JSON`."""
    paths = list(json_paths(obj))
    path = paths[data.draw(st.integers(0, len(paths) - 1), label="path")]
    return replace_at(obj, path, data.draw(JSON, label="value"))
