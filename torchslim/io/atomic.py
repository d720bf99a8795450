"""Atomic artifact folders: write into a temporary folder beside the target, manifest last, rename.

A crash or Ctrl-C leaves either the old artifact or nothing; the old artifact is only removed once the
new one is complete. Stale temporary folders from an earlier crash are cleaned on the next write.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hi")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['a.txt', 'manifest.json']
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torchslim.errors import OutputExistsError

_TMP_PREFIX = ".torchslim-tmp-"
_OLD_PREFIX = ".torchslim-old-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_dir(target: Path, force: bool) -> None:
    """Raise OutputExistsError if ``target`` is a file, or a non-empty folder and ``force`` is False."""
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputExistsError(f"{target} is not empty; pass --force (force=True) to replace it")


def _clean_stale(parent: Path, name: str) -> None:
    for prefix in (_TMP_PREFIX, _OLD_PREFIX):
        for stale in parent.glob(f"{prefix}{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_dir(target: str | Path, *, force: bool = False, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success write ``manifest.json`` (sha256 of each file) and
    move it into place at ``target``. On any exception the temporary folder is removed."""
    target = Path(target)
    check_output_dir(target, force)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{target.name}-", dir=parent))
    except OSError as e:
        raise OutputExistsError(f"cannot write under {parent}: {e}") from None
    try:
        yield tmp
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        body = dict(manifest or {})
        body["files"] = files
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{_OLD_PREFIX}{target.name}-", dir=parent))
            os.rmdir(old)
            os.replace(target, old)  # the new artifact is complete: only now move the old one aside
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputExistsError(f"writing {target} failed: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
