"""Where the built-in workloads find their data sets: ``--data`` when given, else under the folder named
by the ``TORCHSLIM_DATA`` environment variable (holding ``stsbenchmark/``,
``tinyshakespeare/input.txt`` and ``fsdd/recordings``).

Example:
    >>> import os
    >>> from unittest import mock
    >>> data_path("/data/sts", "stsbenchmark", "minilm").as_posix()
    '/data/sts'
    >>> with mock.patch.dict(os.environ, {DATA_ENV: "/datasets"}):
    ...     data_path(None, "stsbenchmark", "minilm").as_posix()
    '/datasets/stsbenchmark'
    >>> with mock.patch.dict(os.environ, clear=True):
    ...     data_path(None, "stsbenchmark", "minilm")
    Traceback (most recent call last):
    ...
    torchslim.errors.UsageError: minilm needs its data set: pass --data PATH (its stsbenchmark) or set TORCHSLIM_DATA to the folder holding stsbenchmark
"""

from __future__ import annotations

import os
from pathlib import Path

from torchslim.errors import UsageError

__all__ = ["DATA_ENV", "data_path"]

DATA_ENV = "TORCHSLIM_DATA"


def data_path(data: str | Path | None, relative: str, what: str) -> Path:
    """``data`` when given, else ``$TORCHSLIM_DATA/relative``.

    Raises:
        UsageError: neither is given (the message names both ways).
    """
    if data is not None:
        return Path(data)
    root = os.environ.get(DATA_ENV)
    if not root:
        raise UsageError(
            f"{what} needs its data set: pass --data PATH (its {relative}) or set {DATA_ENV} to the folder holding {relative}"
        )
    return Path(root) / relative
