"""How much memory this process may still use: ``TORCHSLIM_MEMORY_LIMIT``, cgroup limits, MemAvailable.

The answer is the smallest of what applies (Linux): the cgroup v2 ``memory.max`` less ``memory.current``
of this process's cgroup and its ancestors, the cgroup v1 ``memory.limit_in_bytes`` less
``memory.usage_in_bytes``, and ``MemAvailable`` of ``/proc/meminfo``. ``TORCHSLIM_MEMORY_LIMIT``
(``2G``, ``512M``, ``1.5GiB``, bytes) replaces all of them, so a test or a user can state the budget.
Elsewhere (no ``/proc``) nothing is known and :func:`available_memory` returns ``None``.

psutil would give only MemAvailable (not the cgroup limits a container runs under) and is not a
dependency, so the few files are read here.

Example:
    >>> parse_size("1.5G"), parse_size("512MiB"), parse_size("4096")
    (1610612736, 536870912, 4096)
    >>> parse_meminfo("MemTotal: 8000 kB\\nMemAvailable:   2048 kB\\n")
    2097152
    >>> format_bytes(3 * 2**30 + 2**29)
    '3.5 GiB'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from torchslim.errors import ConfigError

__all__ = ["ENV_LIMIT", "Available", "available_memory", "format_bytes", "parse_meminfo", "parse_size"]

ENV_LIMIT = "TORCHSLIM_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything past 2**60 is that.
_UNLIMITED = 2**60


@dataclass(frozen=True)
class Available:
    """Bytes the process may still allocate, and where that figure comes from (for messages)."""

    bytes: int
    source: str


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional binary unit (K, M, G, T; ``B``/``iB`` suffix allowed).

    Raises:
        ConfigError: not a size.
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise ConfigError(f"{ENV_LIMIT}={text!r} is not a size; use bytes or a number with K, M, G or T (e.g. 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_meminfo(text: str) -> int | None:
    """``MemAvailable`` in bytes from the text of ``/proc/meminfo`` (None when absent)."""
    m = re.search(r"^MemAvailable:\s+([0-9]+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def cgroup_room(limit_text: str, usage_text: str) -> int | None:
    """``limit - usage`` from a cgroup's limit and usage files; None when unlimited or unreadable.

    Example:
        >>> cgroup_room("max\\n", "100\\n") is None, cgroup_room("1000\\n", "400\\n")
        (True, 600)
    """
    limit, usage = limit_text.strip(), usage_text.strip()
    if not limit.isdigit() or not usage.isdigit() or int(limit) >= _UNLIMITED:
        return None
    return max(0, int(limit) - int(usage))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_limits(root: Path, proc_cgroup: str) -> list[Available]:
    """Room under each cgroup limit (v2: this cgroup and its ancestors; v1: the memory controller's)."""
    found: list[Available] = []
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        rel = rel.strip().lstrip("/")
        if hid == "0" and controllers == "":  # v2 unified hierarchy
            base, limit_name, usage_name = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1 memory controller
            base, limit_name, usage_name = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        # Inside a cgroup namespace the recorded path may not exist under the mount: fall back to the root.
        folder = base / rel if (base / rel).is_dir() else base
        while True:
            limit, usage = _read(folder / limit_name), _read(folder / usage_name)
            room = cgroup_room(limit, usage) if limit is not None and usage is not None else None
            if room is not None:
                found.append(Available(room, f"cgroup {limit_name} {format_bytes(int(limit or 0))}"))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return found


def available_memory(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Available | None:
    """The memory this process may still allocate (see the module docstring); None when unknown.

    Raises:
        ConfigError: ``TORCHSLIM_MEMORY_LIMIT`` is set but is not a size.
    """
    override = os.environ.get(ENV_LIMIT)
    if override:
        return Available(parse_size(override), ENV_LIMIT)
    candidates: list[Available] = []
    proc_cgroup = _read(proc / "self" / "cgroup")
    if proc_cgroup is not None:
        candidates += _cgroup_limits(cgroup_root, proc_cgroup)
    meminfo = _read(proc / "meminfo")
    free = parse_meminfo(meminfo) if meminfo is not None else None
    if free is not None:
        candidates.append(Available(free, "MemAvailable"))
    return min(candidates, key=lambda a: a.bytes, default=None)
