"""Atomic artifact folders and files: write into a hidden temporary beside the target, then rename.

A crash, SIGKILL or Ctrl-C leaves either the old artifact or nothing; the old artifact is only removed
once the new one is complete. Stale temporaries (``.torchslim-tmp-<name>-*``) from an earlier crash are
hidden and cleaned on the next write of the same target. Two processes writing the same folder at
once: one wins, the other gets OutputExistsError (exit 7). ``atomic_file`` does the same for one file
(checkpoints, exported graphs); a command that owns one output file for its whole run (``torchslim export
--out FILE``) also holds :func:`writer_lock` on it, the lock ``atomic_dir`` takes, so a second writer of
the same file meanwhile exits 7.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hi")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['a.txt', 'manifest.json']
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from torchslim.errors import OutputExistsError

_TMP_PREFIX = ".torchslim-tmp-"
_OLD_PREFIX = ".torchslim-old-"
_LOCK_PREFIX = ".torchslim-lock-"


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
        for stale in parent.glob(f"{glob_escape(prefix + name)}-*"):
            shutil.rmtree(stale, ignore_errors=True)


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_os_error(e: OSError) -> str:
    """A short reason for an I/O failure, naming the problem (no space, permission, read-only, ...).

    Example:
        >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device"))
        'no space left on the device'
    """
    return _REASONS.get(e.errno) or (e.strerror or str(e) or type(e).__name__).lower()


@contextmanager
def write_errors(target: Path) -> Iterator[None]:
    """Inside: an ``OSError`` becomes :class:`OutputExistsError` ``writing TARGET failed: REASON`` (the
    writers' one message for no space, permission denied, read-only, ...).

    Example:
        >>> with write_errors(Path("out")):
        ...     raise PermissionError(13, "Permission denied")
        Traceback (most recent call last):
        torchslim.errors.OutputExistsError: writing out failed: permission denied
    """
    try:
        yield
    except OSError as e:
        raise OutputExistsError(f"writing {target} failed: {describe_os_error(e)}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _writer_lock(parent: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on writing ``parent/name``; OutputExistsError at once if another process has it.

    The lock is ``flock`` on ``.torchslim-lock-<name>`` beside the target, removed on release; the kernel
    drops it when its holder dies (a SIGKILLed writer leaves no stale lock, only a file the next writer
    reuses and removes). Without ``fcntl`` (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = parent / f"{_LOCK_PREFIX}{name}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputExistsError(f"{parent / name}: another process is writing it now; try again later") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # still the live lock file (not one its last holder removed while we opened it)
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextmanager
def writer_lock(target: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of ``target`` (the ``flock`` on ``.torchslim-lock-<name>`` beside it that
    :func:`atomic_dir` takes) until the block ends; its parent folder is created when missing.

    For a command that owns an output for its whole run (``torchslim export --out FILE``): a second process
    writing the same target meanwhile (through ``writer_lock`` or ``atomic_dir``) gets OutputExistsError
    (exit 7) and changes nothing. The lock is per open file: the same process cannot take it twice.

    Raises:
        OutputExistsError: another process holds the lock, or the lock file cannot be created (the
            message names the reason: no space, permission denied, read-only, ...).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.onnx"
        >>> with writer_lock(path):
        ...     try:
        ...         with writer_lock(path):
        ...             pass
        ...     except OutputExistsError as e:
        ...         print(e.exit_code, "another process is writing it" in str(e))
        7 True
        >>> sorted(p.name for p in path.parent.iterdir())  # the lock file is removed on release
        []
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    with ExitStack() as held:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(_writer_lock(parent, target.name))
        except OSError as e:
            raise OutputExistsError(f"cannot write under {parent}: {describe_os_error(e)}") from None
        yield


@contextmanager
def atomic_dir(target: str | Path, *, force: bool = False, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success write ``manifest.json`` (sha256 of each file) and
    move it into place at ``target``. On any exception (Ctrl-C included) the temporary folder is removed.

    The folder and its files follow the user's umask. One writer per target at a time: a second process
    writing the same ``target`` meanwhile gets OutputExistsError (exit 7) and changes nothing.

    Raises:
        OutputExistsError: ``target`` is not empty and ``force`` is False, another process is writing
            it, or an I/O error (the message names it: no space, permission denied, read-only, ...).
    """
    target = Path(target)
    check_output_dir(target, force)
    parent = target.parent if str(target.parent) else Path(".")
    with writer_lock(target):
        tmp: Path | None = None
        try:
            with write_errors(target):
                check_output_dir(target, force)  # again, under the lock: another writer may have finished meanwhile
                _clean_stale(parent, target.name)
                tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{target.name}-", dir=parent))
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
                yield tmp
                _follow_umask(tmp.iterdir())
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
                tmp = None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``target`` to write; on success fsync it and rename it onto
    ``target``, so a crash, SIGKILL or Ctrl-C leaves the old file (or none), never half a file.

    On an exception the temporary file is removed. After a SIGKILL it stays hidden
    (``.torchslim-tmp-<name>-*``) and the next ``atomic_file`` of the same target removes it; the
    temporary files of writers still alive are left alone (each holds ``flock`` on its own). Concurrent
    writers of one target do not wait for each other: the last complete one wins, unless they hold
    :func:`writer_lock` on it (as ``torchslim export`` does), which refuses the second one. The file
    follows the user's umask (``mkstemp`` alone would make it 0600).

    Raises:
        OutputExistsError: an I/O error (the message names it: no space, permission denied, read-only, ...).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.txt"
        >>> with atomic_file(path) as tmp:
        ...     _ = tmp.write_text("hi")
        >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
        ('hi', ['a.txt'])
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    tmp: Path | None = None
    fd = -1
    try:
        with write_errors(target):
            parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{target.name}-", suffix=target.suffix, dir=parent)
            tmp = Path(name)
            _hold(fd)
            _clean_dead_files(parent, target.name)
            os.chmod(tmp, 0o666 & ~_umask())
            yield tmp
            _follow_umask([tmp])  # again: a writer may have replaced the file (safetensors' save_file makes it 0600)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the target
            os.replace(tmp, target)
            tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if fd >= 0:
            os.close(fd)


def _follow_umask(paths: Iterable[Path]) -> None:
    """Give the files among ``paths`` the mode the umask asks for: some writers force their own
    (safetensors' ``save_file`` makes every file 0600)."""
    mode = 0o666 & ~_umask()
    for p in paths:
        if p.is_file():
            os.chmod(p, mode)


def _hold(fd: int) -> bool:
    """Take ``flock`` on ``fd`` without waiting; False when another live process holds it (or no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _clean_dead_files(parent: Path, name: str) -> None:
    """Remove the temporary files of :func:`atomic_file` writers of ``parent/name`` that died (SIGKILL):
    a file nobody holds ``flock`` on. Live writers hold theirs, so their files are kept."""
    for stale in parent.glob(f"{glob_escape(_TMP_PREFIX + name)}-*"):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile, or a folder of atomic_dir's
        try:
            if stale.is_file() and _hold(fd):
                stale.unlink(missing_ok=True)
        finally:
            os.close(fd)
