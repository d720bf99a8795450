"""Where the command line writes the full traceback of an unexpected exception.

The CLI prints one line (``torchslim: internal error: <Type>: <message> (full traceback in <path>)``)
and keeps the traceback, with the command and versions, in ``<cache>/logs/`` (``$TORCHSLIM_CACHE`` or
``~/.cache/torchslim``), falling back to the system's temporary folder when that is not writable.

Example:
    >>> import tempfile
    >>> try:
    ...     raise RuntimeError("boom")
    ... except RuntimeError as e:
    ...     path = write_traceback(e, ["measure", "--model", "m:build"], folder=Path(tempfile.mkdtemp()))
    >>> text = path.read_text()
    >>> text.splitlines()[0], "RuntimeError: boom" in text
    ('command: torchslim measure --model m:build', True)
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ["log_dir", "write_traceback"]


def log_dir() -> Path:
    """``<cache>/logs`` (created), the folder crash reports go to."""
    from torchslim.workloads.base import cache_dir

    path = cache_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _report(exc: BaseException, argv: Sequence[str]) -> str:
    import torch

    from torchslim.version import __version__

    lines = [
        f"command: torchslim {' '.join(argv)}",
        f"cwd: {os.getcwd()}",
        f"torchslim {__version__}, torch {torch.__version__}, python {platform.python_version()}, {platform.platform()}",
        "",
        *traceback.format_exception(type(exc), exc, exc.__traceback__),
    ]
    return "\n".join(line.rstrip("\n") for line in lines) + "\n"


def write_traceback(exc: BaseException, argv: Sequence[str], folder: Path | None = None) -> Path:
    """Write ``exc``'s traceback (with the command and versions) to a new file in ``folder`` (default
    :func:`log_dir`, else the temporary folder); return its path."""
    text = _report(exc, argv)
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    folders = [lambda: folder] if folder is not None else [log_dir, lambda: Path(tempfile.gettempdir())]
    for where in folders:
        try:
            path = where() / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    sys.stderr.write(text)  # nowhere to write: the traceback itself is the last resort
    return Path("<stderr>")
