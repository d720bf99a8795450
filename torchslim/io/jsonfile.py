"""JSON output files (the ``--json`` of every command).

Example:
    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "out.json"
    >>> write_json(path, {"a": 1})
    >>> json.loads(path.read_text())
    {'a': 1}
    >>> write_json(None, {"a": 1})  # no path: nothing written
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchslim.errors import OutputExistsError

__all__ = ["write_json"]


def write_json(path: str | Path | None, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` (parent folders created); nothing when ``path`` is None.

    Raises:
        OutputExistsError: the file cannot be written (exit code 7).
    """
    if path:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise OutputExistsError(f"cannot write {path}: {e}") from None
